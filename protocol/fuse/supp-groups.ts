import { FuseProtocolError } from './errors.js';
import { EXT_HEADER, findExtension } from './extensions.js';
import { align8 } from './struct.js';

/** fuse_ext_header.type of the supplementary-groups request extension (FUSE_CREATE_SUPP_GROUP). */
export const FUSE_EXT_GROUPS = 32;

/**
 * The extension a kernel with FUSE_CREATE_SUPP_GROUP appends to CREATE, MKDIR, MKNOD and SYMLINK when the new
 * inode's parent directory belongs to one of the caller's supplementary groups: fuse_supp_groups { u32 nr_groups;
 * u32 groups[] }, padded to 8 bytes. It counts in fuse_in_header.total_extlen (units of 8 bytes).
 */
export function encodeSuppGroups(groups: readonly number[]): Uint8Array {
  const size = align8(EXT_HEADER + 4 + 4 * groups.length);
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
  if (totalExtlen === 0 || totalExtlen * 8 > a.length) return null;
  const e = findExtension(a, totalExtlen, 0, (type) => type === FUSE_EXT_GROUPS);
  if (e === null) return null;
  const d = new DataView(a.buffer, a.byteOffset, a.byteLength);
  const n = e.size >= EXT_HEADER + 4 ? d.getUint32(e.off + EXT_HEADER, true) : 0;
  if (n < 1 || EXT_HEADER + 4 + 4 * n > e.size) throw new FuseProtocolError('bad supplementary groups extension', { size: e.size, n });
  return d.getUint32(e.off + EXT_HEADER + 4, true);
}
