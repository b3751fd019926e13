import type { GuestMemory } from '../../protocol/memory/index.js';
import type { VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { closeQuiet, timerfd, timerfdSetPeriod } from '../../protocol/sys/fd.js';
import { DeferredReplies, type Deferrer } from './deferred.js';
import { E } from './errors.js';
import type { LockWant } from './lock-deadlock.js';
import { logger } from '../../protocol/log.js';
import type { QueueLayout } from '../../protocol/virtqueue/index.js';

const log = logger('virtiofsd');

/**
 * How often waiting locks are tried again when no request here may have freed one (the holder is a host
 * process or another daemon); KUMO_FS_LOCK_RETRY_MS changes it. A release through this daemon retries them at once.
 */
export const LOCK_RETRY_MS = 20;
/**
 * Blocking lock requests waiting at once; more get ENOLCK. Each holds a chain of its ring, so the largest ring (32768)
 * bounds them anyway: a cap below the ring size failed guest processes that had every right to wait.
 */
const MAX_WAITS = 32768;
/** INTERRUPTs kept for requests not yet seen; the oldest goes first (its request most likely came and went). */
const MAX_EARLY_INTERRUPTS = 64;

interface Wait {
  /**
   * Tries the request again without blocking: -EAGAIN while it still would, else its answer (bytes of reply data it
   * wrote after the header through `mem`, or -errno).
   */
  attempt: (mem: GuestMemory) => number;
  hdrGpa: number;
  uniqueLo: number;
  uniqueHi: number;
  owner: VringHandle | null;
  head: number;
  /** What a POSIX SETLKW waits for (null: a flock(2) wait), for deadlock detection. */
  want: LockWant | null;
  /** Its ring stopped (see suspend()): where the ring was then, to tell a restart from a new ring. */
  stopped: { base: number; layout: QueueLayout } | null;
  /** An INTERRUPT came while its ring was stopped: answered EINTR once the ring is back. */
  interrupted: boolean;
}

const sameLayout = (a: QueueLayout, b: QueueLayout): boolean =>
  a.size === b.size && a.descAddr === b.descAddr && a.availAddr === b.availAddr && a.usedAddr === b.usedAddr;

/**
 * Requests that would block in the kernel: SETLKW (fcntl F_SETLKW, and flock(2) without LOCK_NB) on a lock held
 * elsewhere, and an OPEN waiting for a host process to give up its lease on the file. One thread serves every
 * request, so it cannot block for them: the request is parked with its chain out, and tried again, oldest first,
 * after each round of requests (one of them may have released a lock) and on a timer. The reply goes out when it
 * gets through, or with EINTR when the guest interrupts the request or the queue stops.
 */
export class LockWaits implements Deferrer {
  /** Ticks every LOCK_RETRY_MS while a lock is waited for; the queue loop watches it in its epoll. */
  readonly timerFd = timerfd();
  private waits: Wait[] = [];
  private last: Wait | null = null;
  private armed = false;
  private readonly replies = new DeferredReplies();
  /**
   * Uniques of INTERRUPTs that found no waiting request, as [lo, hi] pairs. The hiprio queue is served before
   * the request queue, so an INTERRUPT can be read before the SETLKW it targets, as libfuse also allows for.
   */
  private early: number[] = [];

  constructor(
    private readonly memory: () => GuestMemory,
    private readonly retryMs = LOCK_RETRY_MS,
  ) {}

  get pending(): number {
    return this.waits.length;
  }

  /** Parks a blocked request whose reply header goes to hdrGpa; false when too many wait already. */
  park(attempt: (mem: GuestMemory) => number, hdrGpa: number, uniqueLo: number, uniqueHi: number, want: LockWant | null = null): boolean {
    if (this.waits.length >= MAX_WAITS) return false;
    this.last = { attempt, hdrGpa, uniqueLo, uniqueHi, owner: null, head: 0, want, stopped: null, interrupted: false };
    this.waits.push(this.last);
    this.arm(true);
    return true;
  }

  /** The POSIX locks `owner` waits for. */
  wanting(owner: bigint): LockWant[] {
    const out: LockWant[] = [];
    for (const w of this.waits) if (w.want !== null && w.want.owner === owner) out.push(w.want);
    return out;
  }

  bind(owner: VringHandle, head: number): void {
    const w = this.last as Wait;
    w.owner = owner;
    w.head = head;
  }

  /** Tries every waiting lock again; answers those taken or failed. Returns how many were answered. */
  retry(): number {
    if (this.waits.length === 0) return 0;
    const mem = this.memory();
    const still: Wait[] = [];
    for (const w of this.waits) {
      // Its ring's memory is gone for now (REM_MEM_REG), or its ring is stopped: a lock taken now could not be
      // answered; it waits on.
      if (w.stopped !== null || (w.owner !== null && !w.owner.queue.ringsMapped())) {
        still.push(w);
        continue;
      }
      const r = w.attempt(mem);
      if (r === -E.EAGAIN) still.push(w);
      else this.answer(mem, w, r);
    }
    const done = this.waits.length - still.length;
    this.waits = still;
    this.settle();
    return done;
  }

  /**
   * FUSE_INTERRUPT for `unique`: a waiting request gets EINTR. Returns whether one was waiting; if none was, the
   * interrupt is kept for a request with that unique still to come (see interrupted()).
   */
  interrupt(uniqueLo: number, uniqueHi: number): boolean {
    const k = this.waits.findIndex((w) => w.uniqueLo === uniqueLo && w.uniqueHi === uniqueHi);
    if (k < 0) {
      if (this.early.length >= 2 * MAX_EARLY_INTERRUPTS) this.early.splice(0, 2);
      this.early.push(uniqueLo, uniqueHi);
      return false;
    }
    const w = this.waits[k];
    if (w.stopped !== null) {
      w.interrupted = true;
      return true;
    }
    this.waits.splice(k, 1);
    this.answer(this.memory(), w, -E.EINTR);
    this.settle();
    return true;
  }

  /** Whether an INTERRUPT for `unique` came before the request did (it is then consumed): answer EINTR, do not wait. */
  interrupted(uniqueLo: number, uniqueHi: number): boolean {
    for (let k = 0; k < this.early.length; k += 2) {
      if (this.early[k] === uniqueLo && this.early[k + 1] === uniqueHi) {
        this.early.splice(k, 2);
        return true;
      }
    }
    return false;
  }

  /**
   * The session ended (DESTROY) or a new one starts (INIT): INTERRUPTs kept for requests not seen yet go, since the
   * next session may number its requests from the start again and would have an unrelated one interrupted.
   */
  forgetEarlyInterrupts(): void {
    this.early = [];
  }

  /**
   * `owner`'s ring stops (GET_VRING_BASE: QEMU's stop/cont, a device reset, an unplug): its waits stay parked,
   * unanswered and untried. A SETLKW answered EINTR here reached the guest's process as errno 512 (its FUSE makes a
   * lock's EINTR ERESTARTSYS, and no signal was pending), although the guest asked for nothing to stop.
   */
  suspend(owner: VringHandle): void {
    for (const w of this.waits) {
      if (w.owner === owner && w.stopped === null) w.stopped = { base: owner.queue.nextAvailIdx, layout: { ...owner.queue.layout } };
    }
  }

  /**
   * A ring starts: the waits stopped with that ring index wait on through it when it is the same ring again (same
   * place, same next avail index: QEMU's cont). Any other start is a new ring (the device was reset: the guest that
   * waited is gone), and those waits go without a reply.
   */
  resume(owner: VringHandle): void {
    if (this.waits.length === 0) return;
    const mem = this.memory();
    this.waits = this.waits.filter((w) => {
      if (w.stopped === null || w.owner === null || w.owner.index !== owner.index) return true;
      if (w.stopped.base !== owner.queue.nextAvailIdx || !sameLayout(w.stopped.layout, owner.queue.layout)) return false;
      w.owner = owner;
      w.stopped = null;
      if (!w.interrupted) return true;
      this.answer(mem, w, -E.EINTR);
      return false;
    });
    this.settle();
  }

  /**
   * Answers EINTR to the requests waiting on `owner`'s ring (every ring when null): the back-end restarts it to
   * apply a change, or the front-end is gone. Waits of a stopped ring have no ring to answer through: they go.
   */
  cancel(owner: VringHandle | null): void {
    if (this.waits.length === 0) return;
    const mem = this.memory();
    this.waits = this.waits.filter((w) => {
      if (owner !== null && (w.owner !== owner || w.stopped !== null)) return true;
      if (w.stopped === null) this.answer(mem, w, -E.EINTR);
      return false;
    });
    this.settle();
  }

  close(): void {
    closeQuiet(this.timerFd);
  }

  /** Sends the reply; a wait whose chain can no longer be returned (its ring changed under it) is dropped all the same. */
  private answer(mem: GuestMemory, w: Wait, result: number): void {
    if (w.owner === null) return;
    try {
      this.replies.complete(mem, w.owner, w.head, w.hdrGpa, w.uniqueLo, w.uniqueHi, result);
    } catch (e) {
      log.error({ err: e, ring: w.owner.index, head: w.head }, 'a waiting lock request could not be answered; dropped');
    }
  }

  private settle(): void {
    this.replies.publish();
    if (this.waits.length === 0) this.arm(false);
  }

  private arm(on: boolean): void {
    if (on === this.armed) return;
    timerfdSetPeriod(this.timerFd, on ? this.retryMs : 0);
    this.armed = on;
  }
}
