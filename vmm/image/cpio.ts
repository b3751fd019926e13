import { gzipSync } from 'node:zlib';

/** One initramfs entry. Directories and device nodes carry no data. */
export type CpioEntry =
  | { kind: 'file'; path: string; data: Buffer | string; mode?: number }
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFREG = 0o100000, S_IFDIR = 0o040000, S_IFLNK = 0o120000, S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}

function record(ino: number, mode: number, name: string, data: Buffer, rdev: [number, number] = [0, 0]): Buffer[] {
  const nameBuf = Buffer.from(name + '\0');
  const header =
    '070701' + hex8(ino) + hex8(mode) + hex8(0) + hex8(0) + hex8(mode & S_IFDIR ? 2 : 1) + hex8(0) +
    hex8(data.length) + hex8(0) + hex8(0) + hex8(rdev[0]) + hex8(rdev[1]) + hex8(nameBuf.length) + hex8(0);
  const h = Buffer.from(header, 'ascii');
  return [h, nameBuf, pad4(h.length + nameBuf.length), data, pad4(data.length)];
}

/** A gzip-compressed cpio "newc" archive, as the kernel unpacks into its initial rootfs. */
export function buildCpioGz(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    switch (e.kind) {
      case 'file': {
        const data = typeof e.data === 'string' ? Buffer.from(e.data) : e.data;
        parts.push(...record(ino++, S_IFREG | (e.mode ?? 0o644), name, data));
        break;
      }
      case 'dir':
        parts.push(...record(ino++, S_IFDIR | (e.mode ?? 0o755), name, Buffer.alloc(0)));
        break;
      case 'symlink':
        parts.push(...record(ino++, S_IFLNK | 0o777, name, Buffer.from(e.target)));
        break;
      case 'chardev':
        parts.push(...record(ino++, S_IFCHR | (e.mode ?? 0o600), name, Buffer.alloc(0), [e.major, e.minor]));
        break;
    }
  }
  parts.push(...record(0, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return gzipSync(Buffer.concat(parts), { level: 6 });
}
