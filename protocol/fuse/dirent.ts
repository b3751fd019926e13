import { Dirent, EntryOut, type EntryOut as EntryOutT } from './structs.js';
import { align8 } from './struct.js';

export interface DirEntry {
  ino: number | bigint;
  /** Cookie the kernel passes back as the next READDIR offset (opaque 64-bit). */
  off: bigint;
  type: number;
  name: Uint8Array;
}

export function direntSize(nameLen: number): number {
  return align8(Dirent.size + nameLen);
}

export function direntplusSize(nameLen: number): number {
  return EntryOut.size + direntSize(nameLen);
}

/** Appends one fuse_dirent at buf[off]; returns the new offset, or -1 if it does not fit. */
export function encodeDirent(buf: Uint8Array, off: number, e: DirEntry): number {
  const size = direntSize(e.name.length);
  if (off + size > buf.length) return -1;
  Dirent.encode({ ino: e.ino, off: e.off, namelen: e.name.length, type: e.type }, buf, off);
  buf.set(e.name, off + Dirent.size);
  buf.fill(0, off + Dirent.size + e.name.length, off + size);
  return off + size;
}

export function encodeDirentplus(buf: Uint8Array, off: number, entry: EntryOutT, e: DirEntry): number {
  if (off + direntplusSize(e.name.length) > buf.length) return -1;
  EntryOut.encode(entry, buf, off);
  return encodeDirent(buf, off + EntryOut.size, e);
}

/** Parses a READDIR reply body. */
export function decodeDirents(buf: Uint8Array): DirEntry[] {
  const out: DirEntry[] = [];
  let off = 0;
  while (off + Dirent.size <= buf.length) {
    const d = Dirent.decode(buf, off);
    const end = off + Dirent.size + d.namelen;
    if (end > buf.length) break;
    out.push({ ino: d.ino, off: d.off, type: d.type, name: buf.slice(off + Dirent.size, end) });
    off = align8(end);
  }
  return out;
}

/** Parses a READDIRPLUS reply body. */
export function decodeDirentsplus(buf: Uint8Array): { entry: EntryOutT; dirent: DirEntry }[] {
  const out: { entry: EntryOutT; dirent: DirEntry }[] = [];
  let off = 0;
  while (off + EntryOut.size + Dirent.size <= buf.length) {
    const entry = EntryOut.decode(buf, off);
    const d = Dirent.decode(buf, off + EntryOut.size);
    const nameOff = off + EntryOut.size + Dirent.size;
    if (nameOff + d.namelen > buf.length) break;
    out.push({ entry, dirent: { ino: d.ino, off: d.off, type: d.type, name: buf.slice(nameOff, nameOff + d.namelen) } });
    off = align8(nameOff + d.namelen) ;
  }
  return out;
}
