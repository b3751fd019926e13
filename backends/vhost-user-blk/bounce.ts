import { preadvRaw, pwritevRaw } from '../../protocol/sys/fd.js';
import { ftruncate } from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { mapAnonymous, type Mapping } from '../../protocol/sys/mem.js';
import { IoVecArena } from '../../protocol/sys/uring.js';

const EIO = 5;

/**
 * WRITE_ZEROES over part of a block of an O_DIRECT block device (fallocate takes whole blocks): reads the
 * blocks the range lies in into an aligned buffer, zeroes the range there and writes them back, in the
 * calling thread (the caller holds the WriteGate's lock around it). The ranges are the partial blocks at the
 * ends of a request, so the buffer stays a block or two. An image file whose end lies inside a block is cut
 * back to `end` after a write of that block.
 */
export class DirectZeroes {
  private map: Mapping | null = null;
  private readonly iov = new IoVecArena(1, 1);

  constructor(private readonly fd: number, readonly alignment: number, private readonly end: number) {}

  /** Writes `len` zero bytes at `offset`; returns len or -errno. */
  zero(offset: number, len: number): number {
    const a = this.alignment;
    const at = Math.floor(offset / a) * a;
    const span = Math.ceil((offset + len) / a) * a - at;
    const buf = this.buffer(span);
    const r = this.io(false, span, at);
    if (r < 0) return r;
    // Past the end of the file reads short: zeroes.
    buf.fill(0, r, span);
    buf.fill(0, offset - at, offset - at + len);
    const w = this.io(true, span, at);
    if (w < 0) return w;
    if (w !== span) return -EIO;
    // Only a file this write grew (its read came back short) is cut back: one grown by someone else keeps its data.
    const cut = at + span <= this.end || r === span ? 0 : cutBack(this.fd, Math.max(this.end, at + r));
    return cut < 0 ? cut : len;
  }

  free(): void {
    this.map?.unmap();
    this.map = null;
    this.iov.free();
  }

  private io(write: boolean, span: number, at: number): number {
    this.iov.set(0, 0, Number((this.map as Mapping).ptr), span);
    const a = this.iov.slotAddress(0);
    return write ? pwritevRaw(this.fd, a, 1, at) : preadvRaw(this.fd, a, 1, at);
  }

  /** A page-aligned buffer of at least `span` bytes, kept for the next call. */
  private buffer(span: number): Uint8Array {
    if (this.map === null || this.map.size < span) {
      this.map?.unmap();
      this.map = mapAnonymous(span);
    }
    return this.map.bytes.subarray(0, span);
  }
}

/**
 * After a write of whole blocks that reached past the end of an image file (O_DIRECT writes whole blocks):
 * cuts the file back to `end`. The caller holds every gate stripe, so no other write runs. 0 or -errno.
 */
export function cutBack(fd: number, end: number): number {
  try {
    ftruncate(fd, end);
    return 0;
  } catch (e) {
    return e instanceof SysError ? -e.errno : -EIO;
  }
}

/** Bytes of pooled buffers one queue may hold. */
const POOL_LIMIT = 16 << 20;

/**
 * Aligned buffers for the O_DIRECT requests PooledIo serves through io_uring. Buffers come in power-of-two
 * sizes and are kept for reuse, up to `limit` bytes in all: past that, idle buffers of other sizes are let go
 * to make room, and take() says no only while buffers in use fill the limit (the request then waits).
 */
export class BouncePool {
  private readonly idle = new Map<number, Mapping[]>();
  private bytes = 0;

  constructor(private readonly limit = POOL_LIMIT) {}

  /** A page-aligned buffer of at least `len` bytes (at most the limit), or null while the pool is full. */
  take(len: number): Mapping | null {
    let size = 4096;
    while (size < len) size *= 2;
    if (size > this.limit) throw new RangeError(`a ${len}-byte buffer is larger than the pool (${this.limit} bytes)`);
    const kept = this.idle.get(size)?.pop();
    if (kept !== undefined) return kept;
    for (const [s, list] of this.idle) {
      while (this.bytes + size > this.limit && list.length > 0) {
        (list.pop() as Mapping).unmap();
        this.bytes -= s;
      }
    }
    if (this.bytes + size > this.limit) return null;
    this.bytes += size;
    return mapAnonymous(size);
  }

  give(m: Mapping): void {
    const list = this.idle.get(m.size);
    if (list === undefined) this.idle.set(m.size, [m]);
    else list.push(m);
  }

  /** Unmaps every buffer; all must have been given back. */
  free(): void {
    for (const list of this.idle.values()) for (const m of list) m.unmap();
    this.idle.clear();
    this.bytes = 0;
  }
}

/** The gate's stripes: a write waits only for patches in the stripes its range falls in, and a patch only for them. */
export const STRIPES = 1024;
/** Bytes of the disk per stripe (64 KiB) before the stripes wrap around. */
const REGION_SHIFT = 16;
/** Image flag (see BlkEngineImage.flags): a buffered image's write-back failed once; every later sync fails too. */
export const WRITEBACK_FAILED = 2;
/** Where the gate starts in the image's shared flags (see BlkEngineImage.flags): STRIPES locks, then STRIPES counts. */
const GATE_BASE = 3;
/** Length of an image's shared flags array, the gate included. */
export const IMAGE_FLAGS_LENGTH = GATE_BASE + 2 * STRIPES;
const LOCKS = GATE_BASE;
const WRITES = GATE_BASE + STRIPES;
/** A run of stripes is one number: first + count * STRIPES (0: none); the run may wrap past the last stripe. */
const ALL_STRIPES = STRIPES * STRIPES;

/**
 * Orders block patches (read-modify-write) against the other writes of an image whose O_DIRECT block is
 * larger than a sector, across queue threads. The disk is cut into 64 KiB regions, which map onto 1024
 * stripes; each stripe has a lock, held while a thread patches a block there, and a count of the other
 * writes in flight there. A patch starts once no write is in flight in its stripes, and no write starts
 * in them during the patch, so a patch never writes stale bytes back over a newer write in its block;
 * patches and writes in other stripes go on meanwhile (16 random patches in flight on a large disk seldom
 * share one). Stripes are taken in ascending order. `progress` reaps the caller's own completions (its
 * writes may be the ones a patch waits for) and says whether there were any to wait for.
 */
export class WriteGate {
  constructor(private readonly flags: Int32Array) {}

  /**
   * The stripes a write takes: its own, or every one for a patch whose last block reaches past `end`, the
   * image file's size (it cuts the file back after, with no other write running).
   */
  static stripesFor(offset: number, len: number, patch: boolean, alignment: number, end: number): number {
    return patch && Math.ceil((offset + len) / alignment) * alignment > end ? ALL_STRIPES : WriteGate.stripes(offset, len);
  }

  /** The run of stripes a write of `len` bytes at `offset` falls in (never none). */
  static stripes(offset: number, len: number): number {
    const first = Math.floor(offset / 2 ** REGION_SHIFT);
    const count = Math.floor((offset + Math.max(len, 1) - 1) / 2 ** REGION_SHIFT) - first + 1;
    return count >= STRIPES ? ALL_STRIPES : (first % STRIPES) + count * STRIPES;
  }

  /** The stripes of a run, in the order they are taken. */
  static list(run: number): number[] {
    const out: number[] = [];
    for (let k = 0, n = runCount(run); k < n; k++) out.push(stripeAt(run, k));
    return out;
  }

  /** Before a write that goes to the file as it is, in `run`'s stripes; leave(run) once it completed. */
  enter(run: number, progress: () => boolean): void {
    const n = runCount(run);
    for (;;) {
      let entered = 0;
      let blocked = -1;
      while (entered < n) {
        const s = stripeAt(run, entered++);
        Atomics.add(this.flags, WRITES + s, 1);
        if (Atomics.load(this.flags, LOCKS + s) !== 0) {
          blocked = s;
          break;
        }
      }
      if (blocked < 0) return;
      // Step back out of the stripes entered so far, then wait for the patch that holds this one.
      this.leaveFirst(run, entered);
      this.waitWhile(LOCKS + blocked, (v) => v !== 0, progress);
    }
  }

  leave(run: number): void {
    this.leaveFirst(run, runCount(run));
  }

  /** Before a patch: takes the locks of `run`'s stripes, then waits for the writes in flight there (this thread's included). */
  lock(run: number, progress: () => boolean): void {
    const n = runCount(run);
    for (let k = 0; k < n; k++) {
      const s = stripeAt(run, k);
      while (Atomics.compareExchange(this.flags, LOCKS + s, 0, 1) !== 0) this.waitWhile(LOCKS + s, (v) => v !== 0, progress);
    }
    for (let k = 0; k < n; k++) this.waitWhile(WRITES + stripeAt(run, k), (v) => v > 0, progress);
  }

  unlock(run: number): void {
    for (let k = 0, n = runCount(run); k < n; k++) {
      const s = stripeAt(run, k);
      Atomics.store(this.flags, LOCKS + s, 0);
      Atomics.notify(this.flags, LOCKS + s);
    }
  }

  private leaveFirst(run: number, n: number): void {
    for (let k = 0; k < n; k++) {
      const s = stripeAt(run, k);
      Atomics.sub(this.flags, WRITES + s, 1);
      Atomics.notify(this.flags, WRITES + s);
    }
  }

  private waitWhile(index: number, busy: (v: number) => boolean, progress: () => boolean): void {
    for (;;) {
      const v = Atomics.load(this.flags, index);
      if (!busy(v)) return;
      if (!progress()) Atomics.wait(this.flags, index, v, 1);
    }
  }
}

function runCount(run: number): number {
  return Math.floor(run / STRIPES);
}

/**
 * The k-th stripe of a run in ascending order: a run that wraps past the last stripe is taken from
 * stripe 0 up first, so that every thread takes locks in one order.
 */
function stripeAt(run: number, k: number): number {
  const first = run % STRIPES;
  const wrapped = first + runCount(run) - STRIPES;
  if (wrapped <= 0) return first + k;
  return k < wrapped ? k : first + k - wrapped;
}
