import type { IoVecList } from '../../protocol/sys/fd.js';
import { addressOf } from '../../protocol/sys/libc.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import type { Segment } from '../../protocol/virtqueue/layout.js';
import { readFromChain, writeToChain } from '../../protocol/virtqueue/chain.js';

/**
 * The two halves of one FUSE request as the server sees them: the request bytes (device-readable)
 * and the reply space (device-writable). Bulk data (READ/WRITE payloads) is reached through host
 * iovecs so it moves between the file and guest memory without a copy.
 */
export interface FuseIo {
  readonly inLength: number;
  readonly outLength: number;
  /** Copies request bytes from `offset`; returns how many were copied. */
  readIn(offset: number, dst: Uint8Array): number;
  /** Appends host iovecs covering request bytes [offset, offset+len); returns bytes covered. */
  inIovecs(offset: number, len: number, iov: IoVecList): number;
  writeOut(offset: number, src: Uint8Array): number;
  outIovecs(offset: number, len: number, iov: IoVecList): number;
  /** Guest address of the reply header when it lies in one guest buffer, else -1 (the reply must be written now). */
  outHeaderGpa(): number;
  /** A copy of the reply space's guest buffers, for a reply body written after the request's turn; null: none. */
  outSegments(): Segment[] | null;
}

function pushRange(
  segs: readonly { len: number; ptr: (skip: number, n: number) => bigint }[],
  offset: number,
  len: number,
  iov: IoVecList,
): number {
  let skip = offset;
  let done = 0;
  for (const s of segs) {
    if (done === len) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, len - done);
    if (iov.full) break;
    iov.push(s.ptr(skip, n), n);
    done += n;
    skip = 0;
  }
  return done;
}

const NO_SEGMENTS: readonly Segment[] = [];

/**
 * A descriptor chain in guest memory. One instance is reused for every request of a worker
 * (`reset` points it at the next chain), so the hot path allocates nothing here.
 */
export class ChainIo implements FuseIo {
  inLength = 0;
  outLength = 0;
  private mem: GuestMemory | null = null;
  private readable: readonly Segment[] = NO_SEGMENTS;
  private writable: readonly Segment[] = NO_SEGMENTS;

  reset(mem: GuestMemory, readable: readonly Segment[], writable: readonly Segment[], inLength: number, outLength: number): this {
    this.mem = mem;
    this.readable = readable;
    this.writable = writable;
    this.inLength = inLength;
    this.outLength = outLength;
    return this;
  }
  outHeaderGpa(): number {
    const w = this.writable;
    return w.length > 0 && w[0].len >= 16 ? w[0].addr : -1;
  }
  outSegments(): Segment[] {
    return this.writable.map((s) => ({ addr: s.addr, len: s.len }));
  }
  readIn(offset: number, dst: Uint8Array): number {
    const segs = this.readable;
    // Common case: the whole request header/arguments sit in the first descriptor.
    if (segs.length > 0 && offset + dst.length <= segs[0].len) {
      this.mem!.read(segs[0].addr + offset, dst);
      return dst.length;
    }
    return readFromChain(this.mem!, segs, offset, dst);
  }
  writeOut(offset: number, src: Uint8Array): number {
    const segs = this.writable;
    if (segs.length > 0 && offset + src.length <= segs[0].len) {
      this.mem!.write(segs[0].addr + offset, src);
      return src.length;
    }
    return writeToChain(this.mem!, segs, offset, src);
  }
  inIovecs(offset: number, len: number, iov: IoVecList): number {
    return this.iovecs(this.readable, offset, len, iov);
  }
  outIovecs(offset: number, len: number, iov: IoVecList): number {
    return this.iovecs(this.writable, offset, len, iov);
  }
  private iovecs(segs: readonly Segment[], offset: number, len: number, iov: IoVecList): number {
    const mem = this.mem!;
    let skip = offset;
    let done = 0;
    for (let k = 0; k < segs.length && done < len; k++) {
      const s = segs[k];
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      if (iov.full) break;
      const n = Math.min(s.len - skip, len - done);
      iov.push(mem.hostPtr(s.addr + skip, n), n);
      done += n;
      skip = 0;
    }
    return done;
  }
}

/** Plain host buffers (tests, in-process use). */
export class BufferIo implements FuseIo {
  readonly inLength: number;
  readonly outLength: number;
  constructor(
    private readonly input: readonly Uint8Array[],
    private readonly output: readonly Uint8Array[],
  ) {
    this.inLength = input.reduce((a, b) => a + b.length, 0);
    this.outLength = output.reduce((a, b) => a + b.length, 0);
  }
  outHeaderGpa(): number {
    return -1;
  }
  outSegments(): null {
    return null;
  }
  readIn(offset: number, dst: Uint8Array): number {
    return copy(this.input, offset, dst.length, (b, o, n, d) => dst.set(b.subarray(o, o + n), d));
  }
  writeOut(offset: number, src: Uint8Array): number {
    return copy(this.output, offset, src.length, (b, o, n, d) => b.set(src.subarray(d, d + n), o));
  }
  inIovecs(offset: number, len: number, iov: IoVecList): number {
    return pushRange(this.input.map(hostSeg), offset, len, iov);
  }
  outIovecs(offset: number, len: number, iov: IoVecList): number {
    return pushRange(this.output.map(hostSeg), offset, len, iov);
  }
}

function hostSeg(b: Uint8Array): { len: number; ptr: (skip: number, n: number) => bigint } {
  return { len: b.length, ptr: (skip) => addressOf(b) + BigInt(skip) };
}

function copy(
  bufs: readonly Uint8Array[],
  offset: number,
  len: number,
  f: (b: Uint8Array, off: number, n: number, done: number) => void,
): number {
  let skip = offset;
  let done = 0;
  for (const b of bufs) {
    if (done === len) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, len - done);
    f(b, skip, n, done);
    done += n;
    skip = 0;
  }
  return done;
}
