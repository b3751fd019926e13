import type { GuestMemory } from '../../protocol/memory/index.js';
import type { IoUring } from '../../protocol/sys/uring.js';
import { readFromChain, writeToChain, type Segment } from '../../protocol/virtqueue/index.js';
import { BouncePool, cutBack, WriteGate } from './bounce.js';
import type { Mapping } from '../../protocol/sys/mem.js';

/** userData of a pooled request's op: slot + op * OP_SHIFT (as the engine encodes its own ops). */
export const OP_SHIFT = 65536;

/** What a pooled request is doing. */
const IDLE = 0;
/** Reading [lo, lo + span) to copy the part asked for to the guest. */
const READ = 1;
/** Writing the guest's data, copied into the buffer, at the aligned range it covers. */
const WRITE = 2;
/** A patch: reading the blocks the range starts and ends inside, with the range's stripes locked. */
const PATCH_READ = 3;
/** A patch: writing [lo, lo + span) back, the stripes still locked. */
const PATCH_WRITE = 4;

/** complete(): the request goes on (more ops in flight). */
export const POOLED_PENDING = -1;

/** What the queue engine lends the pooled requests. */
export interface PooledHost {
  readonly ring: IoUring;
  readonly fd: number;
  /** The image's size: a file whose end lies inside a block is cut back to it after writing that block. */
  readonly end: number;
  readonly gate: WriteGate | null;
  /** Reaps the engine's completions while a gate wait lasts (see BlkQueueEngine.progress). */
  readonly progress: () => boolean;
  mem(): GuestMemory;
  /** Makes room for k SQEs. */
  ensureSq(k: number): void;
  /** `n` more ops are in flight. */
  started(n: number): void;
}

/**
 * O_DIRECT requests that O_DIRECT cannot take as they are (guest buffers off the alignment, or a range that
 * starts or ends inside a block) served through pooled aligned buffers and io_uring, so that they overlap
 * instead of queueing behind one another in the queue thread:
 * - a read reads the blocks around the range and copies the part asked for to the guest on completion;
 * - a write on the alignment copies the guest's data into the buffer and writes it (counted by the gate);
 * - a patch (a write starting or ending inside a block) locks its gate stripes, reads the blocks at its ends,
 *   copies the guest's data over them and writes the span back, then unlocks. A later request of this
 *   queue that needs those stripes waits for it through `progress`, which reaps this ring.
 * start() returns false when the pool has no buffer to give; the engine then bounces the request in its thread.
 */
export class PooledIo {
  private readonly pool = new BouncePool();
  private readonly buf: (Mapping | null)[];
  private readonly segs: (Segment[] | null)[];
  private readonly skip: Uint32Array;
  private readonly offset: Float64Array;
  private readonly len: Float64Array;
  private readonly lo: Float64Array;
  private readonly span: Float64Array;
  private readonly phase: Uint8Array;
  private readonly left: Uint8Array;
  private readonly failed: Uint8Array;
  private readonly mask: Uint32Array;

  constructor(private readonly host: PooledHost, readonly alignment: number, slots: number) {
    this.buf = new Array<Mapping | null>(slots).fill(null);
    this.segs = new Array<Segment[] | null>(slots).fill(null);
    this.skip = new Uint32Array(slots);
    this.offset = new Float64Array(slots);
    this.len = new Float64Array(slots);
    this.lo = new Float64Array(slots);
    this.span = new Float64Array(slots);
    this.phase = new Uint8Array(slots);
    this.left = new Uint8Array(slots);
    this.failed = new Uint8Array(slots);
    this.mask = new Uint32Array(slots);
  }

  /** True while the slot's request is served here. */
  owns(slot: number): boolean {
    return this.phase[slot] !== IDLE;
  }

  start(slot: number, segs: Segment[], skip: number, offset: number, len: number, write: boolean): boolean {
    const a = this.alignment;
    const lo = Math.floor(offset / a) * a;
    const span = Math.ceil((offset + len) / a) * a - lo;
    const buf = this.pool.take(span);
    if (buf === null) return false;
    const h = this.host;
    const patch = write && (lo !== offset || span !== len);
    let mask = 0;
    if (write && h.gate !== null) {
      // Before the request counts as in flight: these waits reap this ring, and may finish other requests.
      mask = WriteGate.stripesFor(offset, len, patch, a, h.end);
      if (patch) h.gate.lock(mask, h.progress);
      else h.gate.enter(mask, h.progress);
    }
    this.buf[slot] = buf;
    this.segs[slot] = segs; // each popped chain has arrays of its own
    this.skip[slot] = skip;
    this.offset[slot] = offset;
    this.len[slot] = len;
    this.lo[slot] = lo;
    this.span[slot] = span;
    this.failed[slot] = 0;
    this.mask[slot] = mask;
    const base = Number(buf.ptr);
    if (!write) {
      this.phase[slot] = READ;
      this.issue(slot, 1);
      h.ring.prepRead(h.fd, base, span, lo, slot);
    } else if (!patch) {
      readFromChain(h.mem(), segs, skip, buf.bytes.subarray(0, len));
      this.phase[slot] = WRITE;
      this.issue(slot, 1);
      h.ring.prepWrite(h.fd, base, len, offset, slot);
    } else {
      this.phase[slot] = PATCH_READ;
      const head = offset !== lo;
      const tail = offset + len !== lo + span && (!head || span > a);
      this.issue(slot, (head ? 1 : 0) + (tail ? 1 : 0));
      if (head) h.ring.prepRead(h.fd, base, a, lo, slot);
      if (tail) h.ring.prepRead(h.fd, base + span - a, a, lo + span - a, slot + OP_SHIFT);
    }
    return true;
  }

  /**
   * One op of the slot's request completed (`op`: its index, `res`: its result). Returns POOLED_PENDING while
   * the request goes on, else whether it failed (1) or not (0); the buffer is back in the pool then.
   */
  complete(slot: number, op: number, res: number): number {
    const phase = this.phase[slot];
    const a = this.alignment;
    const buf = this.buf[slot] as Mapping;
    if (phase === READ) {
      const need = this.offset[slot] + this.len[slot] - this.lo[slot];
      if (res < need) this.failed[slot] = 1;
      else this.copyOut(slot, buf);
    } else if (phase === WRITE) {
      if (res !== this.len[slot]) this.failed[slot] = 1;
    } else if (phase === PATCH_READ) {
      // A block past the end of the file reads short: the rest of it is zeroes.
      if (res < 0) this.failed[slot] = 1;
      else if (res < a) buf.bytes.fill(0, (op === 0 ? 0 : this.span[slot] - a) + res, (op === 0 ? a : this.span[slot]));
      if (--this.left[slot] > 0) return POOLED_PENDING;
      if (this.failed[slot] === 0 && this.copyIn(slot, buf)) {
        this.phase[slot] = PATCH_WRITE;
        this.issue(slot, 1);
        this.host.ring.prepWrite(this.host.fd, Number(buf.ptr), this.span[slot], this.lo[slot], slot);
        return POOLED_PENDING;
      }
    } else if (phase === PATCH_WRITE) {
      if (res !== this.span[slot]) this.failed[slot] = 1;
      else if (this.lo[slot] + this.span[slot] > this.host.end && cutBack(this.host.fd, this.host.end) < 0) this.failed[slot] = 1;
    }
    return this.finish(slot, buf);
  }

  /** Unmaps the pool's buffers; every request must have completed. */
  free(): void {
    this.pool.free();
  }

  private issue(slot: number, n: number): void {
    this.left[slot] = n;
    this.host.ensureSq(n);
    this.host.started(n);
  }

  private finish(slot: number, buf: Mapping): number {
    const gate = this.host.gate;
    const mask = this.mask[slot];
    if (gate !== null && mask !== 0) {
      if (this.phase[slot] === WRITE) gate.leave(mask);
      else gate.unlock(mask);
    }
    this.phase[slot] = IDLE;
    this.segs[slot] = null;
    this.buf[slot] = null;
    this.pool.give(buf);
    return this.failed[slot];
  }

  /** The guest's part of a completed read; the request fails if its memory went away. */
  private copyOut(slot: number, buf: Mapping): void {
    const from = this.offset[slot] - this.lo[slot];
    try {
      writeToChain(this.host.mem(), this.segs[slot] as Segment[], this.skip[slot], buf.bytes.subarray(from, from + this.len[slot]));
    } catch {
      this.failed[slot] = 1;
    }
  }

  /** The guest's data over the blocks just read; false (and the request failed) if its memory went away. */
  private copyIn(slot: number, buf: Mapping): boolean {
    const from = this.offset[slot] - this.lo[slot];
    try {
      readFromChain(this.host.mem(), this.segs[slot] as Segment[], this.skip[slot], buf.bytes.subarray(from, from + this.len[slot]));
      return true;
    } catch {
      this.failed[slot] = 1;
      return false;
    }
  }
}
