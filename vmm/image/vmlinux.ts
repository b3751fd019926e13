import { spawnSync } from 'node:child_process';
import { ImageError } from './errors.js';

/** Xen ELF note type XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 0x12;
const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** The kernel compressions Debian ships: LZ4 (bookworm's 6.1) and zstd (the 6.12 of bookworm-backports). */
const FORMATS = [
  { name: 'lz4', magic: LZ4_LEGACY_MAGIC, tool: 'lz4' },
  { name: 'zstd', magic: ZSTD_MAGIC, tool: 'zstd' },
] as const;

/**
 * The compressed kernel inside a bzImage. The setup header gives its exact place
 * (payload_offset/payload_length at 0x248, relative to the protected-mode code after the setup
 * sectors); the last 4 bytes of the payload are the uncompressed size, not compressed data.
 */
export function kernelPayload(bz: Buffer): { data: Buffer; expectedSize: number; tool: 'lz4' | 'zstd' } {
  if (bz.length < 0x250 || bz.readUInt32LE(0x202) !== 0x53726448 /* "HdrS" */) {
    throw new ImageError('not a bzImage (no HdrS setup header)', { size: bz.length });
  }
  const setupSects = bz[0x1f1] || 4;
  const base = (setupSects + 1) * 512;
  const off = base + bz.readUInt32LE(0x248);
  const len = bz.readUInt32LE(0x24c);
  if (off + len > bz.length || len < 8) throw new ImageError('bzImage payload outside the file', { off, len, size: bz.length });
  const payload = bz.subarray(off, off + len);
  const format = FORMATS.find((f) => payload.subarray(0, 4).equals(f.magic));
  if (format === undefined) {
    throw new ImageError('bzImage payload is neither LZ4 (legacy frame magic 02 21 4c 18) nor zstd (28 b5 2f fd)', {
      payloadStart: payload.subarray(0, 4).toString('hex'),
    });
  }
  return { data: payload.subarray(0, len - 4), expectedSize: payload.readUInt32LE(len - 4), tool: format.tool };
}

function decompress(tool: 'lz4' | 'zstd', data: Buffer): Buffer {
  const r = spawnSync(tool, ['-dc'], { input: data, maxBuffer: 512 << 20 });
  if (r.error) throw new ImageError(`cannot run ${tool} (apt-get install ${tool})`, { error: r.error.message });
  if (r.status !== 0) throw new ImageError(`${tool} -d failed`, { status: r.status, stderr: r.stderr.toString() });
  return r.stdout;
}

export interface ElfNote { name: string; type: number; desc: Buffer }

/** Notes from the PT_NOTE segments of an ELF64 little-endian file; throws on a malformed file. */
export function elfNotes(elf: Buffer): ElfNote[] {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new ImageError('not an ELF file');
  if (elf[4] !== 2 || elf[5] !== 1) throw new ImageError('not ELF64 little-endian', { class: elf[4], data: elf[5] });
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  if (phentsize < 56 || phoff + phnum * phentsize > elf.length) throw new ImageError('bad ELF program headers', { phoff, phnum, phentsize });
  const notes: ElfNote[] = [];
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (elf.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    const off = Number(elf.readBigUInt64LE(ph + 8));
    const size = Number(elf.readBigUInt64LE(ph + 32));
    if (off + size > elf.length) throw new ImageError('PT_NOTE outside the file', { off, size });
    let p = off;
    const end = off + size;
    const align4 = (n: number): number => (n + 3) & ~3;
    while (p + 12 <= end) {
      const namesz = elf.readUInt32LE(p);
      const descsz = elf.readUInt32LE(p + 4);
      const type = elf.readUInt32LE(p + 8);
      const nameStart = p + 12;
      const descStart = nameStart + align4(namesz);
      const next = descStart + align4(descsz);
      if (next > end) throw new ImageError('ELF note overruns its segment', { at: p });
      const name = elf.toString('latin1', nameStart, nameStart + namesz).replace(/\0+$/, '');
      notes.push({ name, type, desc: elf.subarray(descStart, descStart + descsz) });
      p = next;
    }
  }
  return notes;
}

/** The PVH entry address of an ELF vmlinux, or null if it has no XEN_ELFNOTE_PHYS32_ENTRY note. */
export function pvhEntry(elf: Buffer): number | null {
  const note = elfNotes(elf).find((n) => n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY);
  if (!note) return null;
  return note.desc.length >= 8 ? Number(note.desc.readBigUInt64LE(0)) : note.desc.readUInt32LE(0);
}

/** Cuts the ELF vmlinux out of a Debian (LZ4 or zstd) bzImage and checks it is PVH-bootable. */
export function extractVmlinux(bz: Buffer): { elf: Buffer; pvhEntry: number } {
  const { data, expectedSize, tool } = kernelPayload(bz);
  const elf = decompress(tool, data);
  if (elf.length !== expectedSize) throw new ImageError('decompressed kernel has the wrong size', { got: elf.length, expectedSize });
  const entry = pvhEntry(elf);
  if (entry === null) throw new ImageError('vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)');
  return { elf, pvhEntry: entry };
}
