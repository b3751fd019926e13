import type { ChainReach } from './errors.js';
import { USED_ELEM_SIZE, type Segment } from './layout.js';

/** One log bit covers this many bytes of guest-physical memory (vhost-user "Migration"). */
export const DIRTY_LOG_PAGE = 4096;

/**
 * The front-end's dirty-page bitmap while it migrates the guest: bit n of the log stands for guest-physical page n.
 * Bits are set with atomic ORs: the front-end collects and clears them (atomically too) while the queue threads run,
 * and two queue threads may dirty pages that share a byte.
 */
export class DirtyLog {
  /** Pages written past the end of the log (a front-end that sized it for less memory than it gave us). */
  missedPages = 0;

  constructor(private readonly bits: Uint8Array) {}

  /** Marks every page that [gpa, gpa + len) touches. */
  mark(gpa: number, len: number): void {
    if (len <= 0 || gpa < 0) return;
    const first = Math.floor(gpa / DIRTY_LOG_PAGE);
    const last = Math.floor((gpa + len - 1) / DIRTY_LOG_PAGE);
    const bits = this.bits;
    for (let p = first; p <= last;) {
      const byte = Math.floor(p / 8);
      if (byte >= bits.length) {
        this.missedPages += last - p + 1;
        return;
      }
      const lo = p % 8;
      const hi = Math.min(7, lo + (last - p));
      // Bits lo..hi of this byte in one OR.
      Atomics.or(bits, byte, ((0xff << lo) & (0xff >> (7 - hi))) & 0xff);
      p += hi - lo + 1;
    }
  }
}

const NO_WRITES: readonly Segment[] = [];

/**
 * One ring's part in dirty logging. It remembers the device-writable buffers of every taken chain (whether or not
 * the front-end logs now: a request taken before logging began may complete after), and, while a log is in use, marks
 * them once the chain is used (its data is in guest memory by then), and marks each write to the used ring.
 */
export class RingDirtyLog {
  /** The log bits go to while the front-end logs (LOG_ALL acked and a log set), else null. */
  log: DirtyLog | null = null;
  private readonly writes: (readonly Segment[])[];

  constructor(
    size: number,
    /** Guest-physical address the used ring is logged at (SET_VRING_ADDR with VRING_F_LOG), or null: not logged. */
    public usedAddr: number | null,
  ) {
    this.writes = new Array<readonly Segment[]>(size).fill(NO_WRITES);
  }

  /** A chain was taken: these are the buffers the device may write. */
  taken(head: number, writable: readonly Segment[]): void {
    this.writes[head] = writable;
  }

  /** A malformed chain was taken: the device may still answer through the buffers that lie in guest memory. */
  takenMalformed(head: number, reach: ChainReach): void {
    const segs: Segment[] = [];
    if (reach.firstWritable) segs.push(reach.firstWritable);
    if (reach.lastWritable && reach.lastWritable !== reach.firstWritable) segs.push(reach.lastWritable);
    this.writes[head] = segs;
  }

  /**
   * The chain went into used element `slot` with `writtenLen` bytes written. Every writable buffer is marked, not
   * just the first writtenLen bytes: devices put a status byte last (blk), and a page marked in vain costs only a copy.
   */
  used(head: number, writtenLen: number, slot: number): void {
    const segs = this.writes[head];
    this.writes[head] = NO_WRITES;
    const log = this.log;
    if (log === null) return;
    if (writtenLen > 0) for (const s of segs) log.mark(s.addr, s.len);
    this.usedRing(4 + USED_ELEM_SIZE * slot, USED_ELEM_SIZE);
  }

  /** The device wrote `len` bytes at `offset` of the used ring (its flags, idx or avail_event). */
  usedRing(offset: number, len: number): void {
    if (this.log !== null && this.usedAddr !== null) this.log.mark(this.usedAddr + offset, len);
  }
}
