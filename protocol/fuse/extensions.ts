import { FuseProtocolError } from './errors.js';

/** fuse_ext_header { u32 size; u32 type }: the head of every request extension (and of a security context block). */
export const EXT_HEADER = 8;

/** One request extension: where its header starts in the arguments, its whole size and its type. */
export interface Extension {
  off: number;
  size: number;
  type: number;
}

/** The extension whose header starts at `off` in `a`; one that overruns the request is an error. */
export function extensionAt(a: Uint8Array, off: number): Extension {
  if (off + EXT_HEADER > a.length) throw new FuseProtocolError('request extension header overruns the request', { off });
  const d = new DataView(a.buffer, a.byteOffset, a.byteLength);
  const size = d.getUint32(off, true);
  if (size < EXT_HEADER || off + size > a.length) throw new FuseProtocolError('bad request extension size', { size });
  return { off, size, type: d.getUint32(off + 4, true) };
}

/**
 * The first request extension `want` accepts, or null: the extensions are the last `totalExtlen` * 8 bytes of a
 * request's arguments `a` (fuse_in_header.total_extlen), which must not reach back before `after`.
 */
export function findExtension(a: Uint8Array, totalExtlen: number, after: number, want: (type: number) => boolean): Extension | null {
  let off = a.length - totalExtlen * 8;
  if (off < after) throw new FuseProtocolError('request extensions overlap the arguments', { totalExtlen });
  while (off < a.length) {
    const e = extensionAt(a, off);
    if (want(e.type)) return e;
    off += e.size;
  }
  return null;
}
