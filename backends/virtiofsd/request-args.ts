import { FuseProtocolError, decodeSecctx, decodeSuppGroup, type InHeader, type SecurityContext } from '../../protocol/fuse/index.js';
import type { Caller } from './credentials.js';
import type { FuseSession } from './session.js';

/** A NUL-terminated name at a[off]; `next` is the offset after the NUL. */
export function cstring(a: Uint8Array, off: number): { name: Uint8Array; next: number } {
  const end = a.indexOf(0, off);
  if (off > a.length || end < 0) throw new FuseProtocolError('unterminated name', { off });
  return { name: a.subarray(off, end), next: end + 1 };
}

/** A request's unique as the two u32 halves parked requests keep (lo, hi). */
export function uniqueHalves(u: bigint): [number, number] {
  return [Number(u & 0xffff_ffffn), Number(u >> 32n)];
}

/** Who sent the request. */
export function callerOf(h: InHeader): Caller {
  return { uid: h.uid, gid: h.gid, pid: h.pid };
}

/** The caller of a creation, with the supplementary group its request extension carries (FUSE_CREATE_SUPP_GROUP). */
export function creatorOf(session: FuseSession, h: InHeader, a: Buffer): Caller {
  const c = callerOf(h);
  if (session.createSuppGroup && h.totalExtlen > 0) c.suppGid = decodeSuppGroup(a, h.totalExtlen);
  return c;
}

/** The label a creation carries (FUSE_SECURITY_CTX, negotiated under --security-label) after its names at `after`. */
export function labelOf(session: FuseSession, h: InHeader, a: Buffer, after: number): SecurityContext | null {
  return session.securityCtx ? decodeSecctx(a, after, h.totalExtlen) : null;
}
