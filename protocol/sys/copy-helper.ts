import type { Worker } from 'node:worker_threads';
import {
  CTL_CQ_HEAD, CTL_CQ_TAIL, CTL_SLEEPING, CTL_SQ_TAIL, CTL_STATE, CTL_STOP, CTL_WORDS, CQ_I32, SQ_F64, SQ_I32,
  type CopyHelperShared, type CopyOp,
} from './copy-helper-layout.js';
import { STATE_EXITED, STATE_RUNNING, awaitHelperExit, startHelperThread } from './helper-thread.js';
import { schedYield } from './proc.js';

/** How long close() waits for the thread to let go of the wake eventfd. */
const EXIT_WAIT_MS = 5000;

/**
 * A second thread that runs one thread's buffered copies (preadv/pwritev between the page cache and guest memory)
 * beside it, handed over through shared memory. While it is awake a handover costs no syscall and no wakeup, which
 * io-wq (IOSQE_ASYNC) does; it polls `spinUs` for more work after each burst, then sleeps. Results come back in
 * order; after each burst the helper writes `wakeFd`, so an owner asleep in epoll on it comes to reap them.
 * Until its thread runs (`ready`), the owner copies itself.
 */
export class CopyHelper {
  private readonly ctl: Int32Array;
  private readonly sqI: Int32Array;
  private readonly sqF: Float64Array;
  private readonly cq: Int32Array;
  private readonly mask: number;
  private sqTail = 0;
  private cqHead = 0;
  private readonly worker: Worker;

  /** `entries` (a power of two) bounds the copies handed over and not yet reaped. */
  constructor(readonly entries: number, wakeFd: number, spinUs: number) {
    if (!Number.isInteger(entries) || entries < 1 || (entries & (entries - 1)) !== 0) throw new RangeError(`copy helper ring of ${entries} entries`);
    this.mask = entries - 1;
    const shared: CopyHelperShared = {
      ctl: new SharedArrayBuffer(CTL_WORDS * 4),
      sqI32: new SharedArrayBuffer(entries * SQ_I32 * 4),
      sqF64: new SharedArrayBuffer(entries * SQ_F64 * 8),
      cq: new SharedArrayBuffer(entries * CQ_I32 * 4),
      entries,
      wakeFd,
      spinUs,
    };
    this.ctl = new Int32Array(shared.ctl);
    this.sqI = new Int32Array(shared.sqI32);
    this.sqF = new Float64Array(shared.sqF64);
    this.cq = new Int32Array(shared.cq);
    this.worker = startHelperThread('copy-helper-thread', shared, 'kumo-copy', this.ctl, CTL_STATE);
  }

  /** The thread runs and takes copies. */
  get ready(): boolean {
    return Atomics.load(this.ctl, CTL_STATE) === STATE_RUNNING;
  }

  /** The thread ended (or never came up): it touches nothing more. */
  get exited(): boolean {
    return Atomics.load(this.ctl, CTL_STATE) === STATE_EXITED;
  }

  /** Copies handed over and not reaped yet. */
  get backlog(): number {
    return (this.sqTail - this.cqHead) | 0;
  }

  /**
   * Hands over preadv/pwritev(fd, iovAddr, count, offset) (`op`: OP_READ, OP_WRITE or OP_READ_CACHED); the iovecs and
   * buffers must stay valid until it is reaped.
   */
  submit(fd: number, iovAddr: number, count: number, offset: number, op: CopyOp, tag: number): void {
    if (this.backlog >= this.entries) throw new RangeError('copy helper ring full');
    const k = this.sqTail & this.mask;
    this.sqI[k * SQ_I32] = fd;
    this.sqI[k * SQ_I32 + 1] = count;
    this.sqI[k * SQ_I32 + 2] = op;
    this.sqI[k * SQ_I32 + 3] = tag;
    this.sqF[k * SQ_F64] = iovAddr;
    this.sqF[k * SQ_F64 + 1] = offset;
    this.sqTail = (this.sqTail + 1) | 0;
    // Both seq_cst: the helper stores SLEEPING before its last look at the tail, so one of the two sees the other.
    Atomics.store(this.ctl, CTL_SQ_TAIL, this.sqTail);
    if (Atomics.load(this.ctl, CTL_SLEEPING) !== 0) Atomics.notify(this.ctl, CTL_SQ_TAIL);
  }

  hasResults(): boolean {
    return this.cqHead !== Atomics.load(this.ctl, CTL_CQ_TAIL);
  }

  /** Hands every finished copy to `done(tag, bytes or -errno)`, in the order they were handed over. */
  reap(done: (tag: number, res: number) => void): void {
    const tail = Atomics.load(this.ctl, CTL_CQ_TAIL);
    while (this.cqHead !== tail) {
      const c = this.cqHead & this.mask;
      const tag = this.cq[c * CQ_I32];
      const res = this.cq[c * CQ_I32 + 1];
      this.cqHead = (this.cqHead + 1) | 0;
      Atomics.store(this.ctl, CTL_CQ_HEAD, this.cqHead);
      done(tag, res);
    }
  }

  /** Waits until a copy handed over has finished (there must be one). */
  waitResult(): void {
    while (!this.hasResults()) schedYield();
  }

  /**
   * Stops the thread (one still starting is waited for: see awaitHelperExit). Reap every copy first. Returns once the
   * thread will not write the wake eventfd again (so the caller may close it), or after EXIT_WAIT_MS if it does not stop.
   */
  close(): boolean {
    Atomics.store(this.ctl, CTL_STOP, 1);
    Atomics.notify(this.ctl, CTL_SQ_TAIL);
    return awaitHelperExit(this.ctl, CTL_STATE, EXIT_WAIT_MS);
  }
}
