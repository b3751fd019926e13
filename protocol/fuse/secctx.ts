import { FuseProtocolError } from './errors.js';
import { extensionAt, findExtension } from './extensions.js';
import { align8 } from './struct.js';

/** The security label a guest LSM gives a new inode (FUSE_SECURITY_CTX): an xattr name and its value. */
export interface SecurityContext {
  name: Uint8Array;
  value: Uint8Array;
}

const HEADER = 8; // fuse_secctx_header { u32 size; u32 nr_secctx }
const ENTRY = 8; // fuse_secctx { u32 size; u32 padding }
/** Extension types 0..31 are a fuse_secctx_header whose nr_secctx is the type (fuse_ext_header shares its layout). */
const MAX_NR_SECCTX = 31;

/**
 * The block a kernel with FUSE_SECURITY_CTX appends to CREATE, MKDIR, MKNOD and SYMLINK: a header, then at most
 * one context (name NUL-terminated, then the value), padded to 8 bytes. Without a label it is the bare header.
 */
export function encodeSecctx(ctx: SecurityContext | null): Uint8Array {
  const size = HEADER + (ctx === null ? 0 : align8(ENTRY + ctx.name.length + 1 + ctx.value.length));
  const b = new Uint8Array(size);
  const d = new DataView(b.buffer);
  d.setUint32(0, size, true);
  d.setUint32(4, ctx === null ? 0 : 1, true);
  if (ctx !== null) {
    d.setUint32(HEADER, ctx.value.length, true);
    b.set(ctx.name, HEADER + ENTRY);
    b.set(ctx.value, HEADER + ENTRY + ctx.name.length + 1);
  }
  return b;
}

/**
 * The security context in a creation's arguments `a` (after the fuse_in_header). Linux before 6.2 puts the block
 * right after the names (at `after`); later kernels make it a request extension, the last `totalExtlen` * 8
 * bytes. Returns null when the block carries no context; a block that overruns the request is an error.
 */
export function decodeSecctx(a: Uint8Array, after: number, totalExtlen: number): SecurityContext | null {
  const isSecctx = (type: number): boolean => type <= MAX_NR_SECCTX;
  const block = totalExtlen > 0 ? findExtension(a, totalExtlen, after, isSecctx) : extensionAt(a, after);
  if (block === null) return null;
  if (!isSecctx(block.type)) throw new FuseProtocolError('bad security context count', { type: block.type });
  if (block.type === 0) return null;
  return decodeOne(a, new DataView(a.buffer, a.byteOffset, a.byteLength), block.off + HEADER, block.off + block.size);
}

function decodeOne(a: Uint8Array, d: DataView, off: number, end: number): SecurityContext {
  if (off + ENTRY > end) throw new FuseProtocolError('security context overruns its block', { off });
  const len = d.getUint32(off, true);
  const nameAt = off + ENTRY;
  const nul = a.indexOf(0, nameAt);
  if (nul < 0 || nul >= end || nul === nameAt) throw new FuseProtocolError('bad security context name', { off });
  if (nul + 1 + len > end) throw new FuseProtocolError('security context value overruns its block', { len });
  return { name: a.subarray(nameAt, nul), value: a.subarray(nul + 1, nul + 1 + len) };
}
