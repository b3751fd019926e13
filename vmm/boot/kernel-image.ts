import { closeSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { constants } from 'node:buffer';
import { BootError } from './errors.js';
import { isElf, parseElf, type ElfImage } from './elf.js';
import { isBzImage, parseBzImage, type BzImage } from './bzimage-header.js';

const MAX_LENGTH = constants.MAX_LENGTH;

export type KernelImage = { kind: 'pvh'; path: string; elf: ElfImage; bytes: Buffer } | { kind: 'bzimage'; path: string; bz: BzImage };

/** Reads and checks a kernel file: a PVH ELF vmlinux or a 64-bit bzImage. No KVM involved. */
export function readKernel(path: string): KernelImage {
  let bytes: Buffer;
  try {
    if (!statSync(path).isFile()) throw new BootError(`kernel ${path} is not a regular file`, { path });
    bytes = readFileSync(path);
  } catch (e) {
    if (e instanceof BootError) throw e;
    throw new BootError(`cannot read kernel ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { path });
  }
  try {
    if (isElf(bytes)) {
      const elf = parseElf(bytes);
      if (elf.pvhEntry === null) {
        throw new BootError('ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use a bzImage or a PVH-enabled vmlinux');
      }
      return { kind: 'pvh', path, elf, bytes };
    }
    if (isBzImage(bytes)) return { kind: 'bzimage', path, bz: parseBzImage(bytes) };
  } catch (e) {
    if (e instanceof BootError) throw new BootError(`kernel ${path}: ${e.message}`, { ...e.context, path });
    throw e;
  }
  throw new BootError(`kernel ${path} is neither an ELF vmlinux with a PVH note nor a bzImage`, { path });
}

export function readInitramfs(path: string): Buffer {
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new BootError(`initramfs ${path} is not a regular file`, { path });
    if (st.size > MAX_LENGTH) throw new BootError(`initramfs ${path} is ${st.size} bytes; kumo loads at most ${MAX_LENGTH}`, { path, size: st.size });
    return readWhole(path, st.size);
  } catch (e) {
    if (e instanceof BootError) throw e;
    throw new BootError(`cannot read initramfs ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { path });
  }
}

/** The file's bytes; readFileSync stops at 2 GiB, a Buffer holds up to buffer.constants.MAX_LENGTH. */
function readWhole(path: string, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  const fd = openSync(path, 'r');
  try {
    let off = 0;
    while (off < size) {
      const n = readSync(fd, buf, off, Math.min(size - off, 1 << 30), off);
      if (n === 0) throw new BootError(`initramfs ${path} shrank while it was read`, { path, size, read: off });
      off += n;
    }
    return buf;
  } finally {
    closeSync(fd);
  }
}
