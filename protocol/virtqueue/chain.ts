import type { GuestMemory } from '../memory/index.js';
import type { Segment } from './layout.js';

/** One available request: device-readable segments first, then device-writable ones. */
export class DescriptorChain {
  constructor(
    readonly head: number,
    readonly readable: Segment[],
    readonly writable: Segment[],
    readonly readableLength: number,
    readonly writableLength: number,
  ) {}
}

/**
 * Copies up to dst.length bytes of the chain's readable data starting at byte `offset` of it.
 * Returns the number of bytes copied (less than dst.length when the readable part is shorter).
 */
export function readFromChain(mem: GuestMemory, segs: readonly Segment[], offset: number, dst: Uint8Array): number {
  let skip = offset;
  let done = 0;
  for (const s of segs) {
    if (done === dst.length) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, dst.length - done);
    mem.read(s.addr + skip, dst.subarray(done, done + n));
    done += n;
    skip = 0;
  }
  return done;
}

/** Copies src into the chain's writable segments starting at byte `offset` of them; returns bytes written. */
export function writeToChain(mem: GuestMemory, segs: readonly Segment[], offset: number, src: Uint8Array): number {
  let skip = offset;
  let done = 0;
  for (const s of segs) {
    if (done === src.length) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, src.length - done);
    mem.write(s.addr + skip, src.subarray(done, done + n));
    done += n;
    skip = 0;
  }
  return done;
}
