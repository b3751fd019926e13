import { FuseProtocolError } from './errors.js';

/** fuse_ext_header.type of the supplementary-groups request extension (FUSE_CREATE_SUPP_GROUP). */
export const FUSE_EXT_GROUPS = 32;
const EXT_HEADER = 8; // fuse_ext_header { u32 size; u32 type }

/**
 * The extension a kernel with FUSE_CREATE_SUPP_GROUP appends to CREATE, MKDIR, MKNOD and SYMLINK when the new
 * inode's parent directory belongs to one of the caller's supplementary groups: fuse_supp_groups { u32 nr_groups;
 * u32 groups[] }, padded to 8 bytes. It counts in fuse_in_header.total_extlen (units of 8 bytes).
 */
export function encodeSuppGroups(groups: readonly number[]): Uint8Array {
  const size = (EXT_HEADER + 4 + 4 * groups.length + 7) & ~7;
  const b = new Uint8Array(size);
  const d = new DataView(b.buffer);
  d.setUint32(0, size, true);
  d.setUint32(4, FUSE_EXT_GROUPS, true);
  d.setUint32(8, groups.length, true);
  groups.forEach((g, i) => d.setUint32(12 + 4 * i, g, true));
  return b;
}

/**
 * The supplementary group in a creation's request extensions (the last `totalExtlen` * 8 bytes of the arguments
 * `a`), or null when there is none. The kernel sends one group; a malformed extension list is an error.
 */
export function decodeSuppGroup(a: Uint8Array, totalExtlen: number): number | null {
  const d = new DataView(a.buffer, a.byteOffset, a.byteLength);
  let off = a.length - totalExtlen * 8;
  if (totalExtlen === 0 || off < 0) return null;
  while (off < a.length) {
    if (off + EXT_HEADER > a.length) throw new FuseProtocolError('request extension header overruns the request', { off });
    const size = d.getUint32(off, true);
    if (size < EXT_HEADER || off + size > a.length) throw new FuseProtocolError('bad request extension size', { size });
    if (d.getUint32(off + 4, true) === FUSE_EXT_GROUPS) {
      const n = size >= EXT_HEADER + 4 ? d.getUint32(off + EXT_HEADER, true) : 0;
      if (n < 1 || EXT_HEADER + 4 + 4 * n > size) throw new FuseProtocolError('bad supplementary groups extension', { size, n });
      return d.getUint32(off + EXT_HEADER + 4, true);
    }
    off += size;
  }
  return null;
}
