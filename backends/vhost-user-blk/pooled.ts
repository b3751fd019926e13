import type { GuestMemory } from '../../protocol/memory/index.js';
import { preadRaw, pwriteRaw } from '../../protocol/sys/fd.js';
import { ECANCELED, type IoUring } from '../../protocol/sys/uring.js';
import { readFromChain, writeToChain, type Segment } from '../../protocol/virtqueue/index.js';
import { BouncePool, cutBack, WriteGate } from './bounce.js';
import type { Mapping } from '../../protocol/sys/mem.js';

/** userData of a pooled request's op: slot + op * OP_SHIFT (as the engine encodes its own ops). */
export const OP_SHIFT = 65536;
/** The largest buffer a request takes: longer ones go through it a piece at a time, so a guest cannot grow it. */
const PIECE = 1 << 20;

/** What a pooled request is doing. */
const IDLE = 0;
/** Waiting for the pool to have room (start() found it at its limit, or others waiting before it). */
const PARKED = 1;
/** Reading the piece [at, at + span) to copy the part asked for to the guest. */
const READ = 2;
/** Writing a piece that covers whole blocks, the guest's data copied into the buffer. */
const WRITE = 3;
/** A piece that starts or ends inside a block: reading the blocks it starts and ends inside. */
const PATCH_READ = 4;
/** Writing such a piece back, the guest's data copied over the blocks read. */
const PATCH_WRITE = 5;
/** Its memory went away: a NOP completes the request as failed. */
const FAILING = 6;

/** complete(): the request goes on (more ops in flight). */
export const POOLED_PENDING = -1;

/** What the queue engine lends the pooled requests. */
export interface PooledHost {
  readonly ring: IoUring;
  readonly fd: number;
  /** The image's size: a file whose end lies inside a block is cut back to it after writing that block. */
  readonly end: number;
  readonly gate: WriteGate | null;
  /** Reaps the engine's completions while a gate wait lasts (see BlkQueueEngine.progress); it must not resume(). */
  readonly progress: () => boolean;
  mem(): GuestMemory;
  /** Makes room for k SQEs. */
  ensureSq(k: number): void;
  /** `n` more ops are in flight. */
  started(n: number): void;
  /** An op was cancelled (io-wq could not start a worker) and is run on this thread instead. */
  cancelled(): void;
}

/**
 * O_DIRECT requests that O_DIRECT cannot take as they are (guest buffers off the alignment, or a range that
 * starts or ends inside a block), served through pooled aligned buffers and io_uring, so that they overlap
 * instead of queueing behind one another in the queue thread. A request goes through one buffer of at most
 * `piece` bytes, a piece of the range at a time:
 * - reading: it reads the blocks around the piece and copies the part asked for to the guest on completion;
 * - writing whole blocks: it copies the guest's data into the buffer and writes it;
 * - writing part of a block (only the first and last pieces can): it reads the blocks the piece starts and
 *   ends inside, copies the guest's data over them and writes the piece back.
 * A write holds its gate stripes from start to finish: counted in them, or locked if any piece patches, so a
 * patch never writes stale bytes back over another write. A later request of this queue that needs those
 * stripes waits through `progress`, which reaps this ring. When the pool is at its limit a request is parked,
 * in order, until resume() finds room (the engine calls it after reaping, outside gate waits).
 */
export class PooledIo {
  private readonly pool: BouncePool;
  private readonly buf: (Mapping | null)[];
  private readonly segs: (Segment[] | null)[];
  private readonly skip: Uint32Array;
  private readonly offset: Float64Array;
  private readonly len: Float64Array;
  /** The current piece: [at, at + span) of the file. */
  private readonly at: Float64Array;
  private readonly span: Float64Array;
  private readonly phase: Uint8Array;
  private readonly writes: Uint8Array;
  /** Whether the request writes part of a block (its gate stripes are locked rather than entered). */
  private readonly patch: Uint8Array;
  private readonly left: Uint8Array;
  private readonly failed: Uint8Array;
  /**
   * Where the file ended as a short patch read of the piece saw it (-1: none came back short). A short read means
   * this piece's write grows the file; someone else may have grown it past `end` inside the block.
   */
  private readonly seenEnd: Float64Array;
  /** The run of gate stripes the request holds (0: none). */
  private readonly run: Uint32Array;
  /** Parked slots, oldest first: a ring of `slots` entries. */
  private readonly parkedSlots: Uint16Array;
  private parkedHead = 0;
  private parkedCount = 0;

  constructor(
    private readonly host: PooledHost,
    readonly alignment: number,
    slots: number,
    /** A multiple of `alignment`. */
    private readonly piece = PIECE,
    poolLimit?: number,
  ) {
    this.pool = new BouncePool(poolLimit);
    this.buf = new Array<Mapping | null>(slots).fill(null);
    this.segs = new Array<Segment[] | null>(slots).fill(null);
    this.skip = new Uint32Array(slots);
    this.offset = new Float64Array(slots);
    this.len = new Float64Array(slots);
    this.at = new Float64Array(slots);
    this.span = new Float64Array(slots);
    this.phase = new Uint8Array(slots);
    this.writes = new Uint8Array(slots);
    this.patch = new Uint8Array(slots);
    this.left = new Uint8Array(slots);
    this.failed = new Uint8Array(slots);
    this.seenEnd = new Float64Array(slots);
    this.run = new Uint32Array(slots);
    this.parkedSlots = new Uint16Array(slots);
  }

  /** True while the slot's request is served here. */
  owns(slot: number): boolean {
    return this.phase[slot] !== IDLE;
  }

  /** Requests waiting for room in the pool. */
  get parked(): number {
    return this.parkedCount;
  }

  /** Takes the request: it completes through complete() (a parked one once resume() started it). */
  start(slot: number, segs: Segment[], skip: number, offset: number, len: number, write: boolean): void {
    const a = this.alignment;
    this.segs[slot] = segs; // each popped chain has arrays of its own
    this.skip[slot] = skip;
    this.offset[slot] = offset;
    this.len[slot] = len;
    this.writes[slot] = write ? 1 : 0;
    this.patch[slot] = write && (offset % a !== 0 || (offset + len) % a !== 0) ? 1 : 0;
    this.failed[slot] = 0;
    this.seenEnd[slot] = -1;
    this.run[slot] = 0;
    if (this.parkedCount > 0 || !this.begin(slot)) {
      this.phase[slot] = PARKED;
      this.parkedSlots[(this.parkedHead + this.parkedCount++) % this.parkedSlots.length] = slot;
    }
  }

  /** Starts parked requests, oldest first, while the pool has room. Never call it from inside a gate wait. */
  resume(): void {
    while (this.parkedCount > 0) {
      const slot = this.parkedSlots[this.parkedHead];
      if (!this.begin(slot)) return;
      this.parkedHead = (this.parkedHead + 1) % this.parkedSlots.length;
      this.parkedCount--;
    }
  }

  /**
   * One op of the slot's request completed (`op`: its index, `res`: its result). Returns POOLED_PENDING while
   * the request goes on, else whether it failed (1) or not (0); the buffer is back in the pool then.
   */
  complete(slot: number, op: number, res: number): number {
    const phase = this.phase[slot];
    const a = this.alignment;
    const buf = this.buf[slot] as Mapping;
    const at = this.at[slot];
    const span = this.span[slot];
    if (res === -ECANCELED && phase !== FAILING) res = this.redo(slot, op);
    const stop = this.offset[slot] + this.len[slot];
    if (phase === READ) {
      if (res < Math.min(stop, at + span) - at) this.failed[slot] = 1;
      else this.copy(slot, buf, false);
    } else if (phase === WRITE) {
      if (res !== span) this.failed[slot] = 1;
    } else if (phase === PATCH_READ) {
      // A block past the end of the file reads short: the rest of it is zeroes.
      if (res < 0) this.failed[slot] = 1;
      else if (res < a) {
        buf.bytes.fill(0, (op === 0 ? 0 : span - a) + res, op === 0 ? a : span);
        const seen = (op === 0 ? at : at + span - a) + res;
        this.seenEnd[slot] = this.seenEnd[slot] < 0 ? seen : Math.min(this.seenEnd[slot], seen);
      }
      if (--this.left[slot] > 0) return POOLED_PENDING;
      if (this.failed[slot] === 0 && this.copy(slot, buf, true)) {
        this.phase[slot] = PATCH_WRITE;
        this.issue(slot, 1);
        this.host.ring.prepWrite(this.host.fd, Number(buf.ptr), span, at, slot);
        return POOLED_PENDING;
      }
    } else if (phase === PATCH_WRITE) {
      if (res !== span) this.failed[slot] = 1;
      // Cut back only a file this write grew: one that someone else grew meanwhile keeps what they put there.
      else if (this.seenEnd[slot] >= 0 && at + span > this.host.end && cutBack(this.host.fd, Math.max(this.host.end, this.seenEnd[slot])) < 0) this.failed[slot] = 1;
      this.seenEnd[slot] = -1;
    }
    if (this.failed[slot] === 0 && at + span < stop) {
      this.next(slot, at + span);
      return POOLED_PENDING;
    }
    return this.finish(slot, buf);
  }

  /** Unmaps the pool's buffers; every request must have completed. */
  free(): void {
    this.pool.free();
  }

  /** Takes a buffer and the gate and issues the first piece; false if the pool has no room. */
  private begin(slot: number): boolean {
    const a = this.alignment;
    const offset = this.offset[slot];
    const len = this.len[slot];
    const lo = Math.floor(offset / a) * a;
    const buf = this.pool.take(Math.min(this.piece, Math.ceil((offset + len) / a) * a - lo));
    if (buf === null) return false;
    const gate = this.host.gate;
    if (this.writes[slot] === 1 && gate !== null) {
      // Before the request counts as in flight: these waits reap this ring, and may finish other requests.
      const patch = this.patch[slot] === 1;
      const run = WriteGate.stripesFor(offset, len, patch, a, this.host.end);
      if (patch) gate.lock(run, this.host.progress);
      else gate.enter(run, this.host.progress);
      this.run[slot] = run;
    }
    this.buf[slot] = buf;
    this.next(slot, lo);
    return true;
  }

  /** Issues the ops of the piece that starts at `at` (on the alignment). */
  private next(slot: number, at: number): void {
    const h = this.host;
    const a = this.alignment;
    const buf = this.buf[slot] as Mapping;
    const offset = this.offset[slot];
    const stop = offset + this.len[slot];
    const span = Math.min(this.piece, Math.ceil(stop / a) * a - at);
    this.at[slot] = at;
    this.span[slot] = span;
    const base = Number(buf.ptr);
    if (this.writes[slot] === 0) {
      this.phase[slot] = READ;
      this.issue(slot, 1);
      h.ring.prepRead(h.fd, base, span, at, slot);
      return;
    }
    const head = offset > at;
    const tail = stop < at + span && (!head || span > a);
    if (!head && stop >= at + span) {
      if (!this.copy(slot, buf, true)) return this.fail(slot);
      this.phase[slot] = WRITE;
      this.issue(slot, 1);
      h.ring.prepWrite(h.fd, base, span, at, slot);
      return;
    }
    this.phase[slot] = PATCH_READ;
    this.issue(slot, (head ? 1 : 0) + (tail ? 1 : 0));
    if (head) h.ring.prepRead(h.fd, base, a, at, slot);
    if (tail) h.ring.prepRead(h.fd, base + span - a, a, at + span - a, slot + OP_SHIFT);
  }

  /** The slot's op that io_uring cancelled without running it (io-wq could not start a worker), run here. */
  private redo(slot: number, op: number): number {
    this.host.cancelled();
    const fd = this.host.fd;
    const base = Number((this.buf[slot] as Mapping).ptr);
    const at = this.at[slot];
    const span = this.span[slot];
    const a = this.alignment;
    switch (this.phase[slot]) {
      case READ: return preadRaw(fd, base, span, at);
      case PATCH_READ: return op === 0 ? preadRaw(fd, base, a, at) : preadRaw(fd, base + span - a, a, at + span - a);
      default: return pwriteRaw(fd, base, span, at);
    }
  }

  /** Completes the request as failed through the ring, as every pooled request completes. */
  private fail(slot: number): void {
    this.failed[slot] = 1;
    this.phase[slot] = FAILING;
    this.issue(slot, 1);
    this.host.ring.prepNop(slot);
  }

  private issue(slot: number, n: number): void {
    this.left[slot] = n;
    this.host.ensureSq(n);
    this.host.started(n);
  }

  private finish(slot: number, buf: Mapping): number {
    const gate = this.host.gate;
    const run = this.run[slot];
    if (gate !== null && run !== 0) {
      if (this.patch[slot] === 1) gate.unlock(run);
      else gate.leave(run);
    }
    this.phase[slot] = IDLE;
    this.segs[slot] = null;
    this.buf[slot] = null;
    this.pool.give(buf);
    return this.failed[slot];
  }

  /**
   * Copies the guest's part of the current piece: out of the buffer into the guest (reads), or from the guest
   * into the buffer (writes). False, and the request failed, if the guest's memory went away.
   */
  private copy(slot: number, buf: Mapping, intoBuffer: boolean): boolean {
    const at = this.at[slot];
    const offset = this.offset[slot];
    const from = Math.max(offset, at);
    const to = Math.min(offset + this.len[slot], at + this.span[slot]);
    const part = buf.bytes.subarray(from - at, to - at);
    const mem = this.host.mem();
    const segs = this.segs[slot] as Segment[];
    const skip = this.skip[slot] + from - offset;
    try {
      if (intoBuffer) readFromChain(mem, segs, skip, part);
      else writeToChain(mem, segs, skip, part);
      return true;
    } catch {
      this.failed[slot] = 1;
      return false;
    }
  }
}
