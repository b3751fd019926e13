// One RX/TX queue pair and its TAP queue fd, driven from one worker's epoll. Back-pressure:
// - RX ring out of buffers → stop polling the TAP for EPOLLIN; the next RX kick resumes it.
// - TAP write would block → keep the chain, poll the TAP for EPOLLOUT, and stop taking TX chains.
// A pass that hits its batch budget re-arms itself through a private eventfd so RX and TX share the
// worker fairly without spinning.
import { WarnLimiter, type Logger } from '../../protocol/log.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, type Epoll } from '../../protocol/sys/epoll.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { VirtqueueError } from '../../protocol/virtqueue/errors.js';
import { COUNTER } from './counters.js';
import { PassResult, type NetQueue } from './net-queue.js';
import { RxPath, type RxOptions } from './rx.js';
import { TxPath, type TxOptions } from './tx.js';

/** What a queue pair needs from a started ring. */
export interface PairRing {
  queue: NetQueue;
  enabled: boolean;
  /** Signals the guest if the queue's notification rules ask for it. */
  notify(): void;
}

export interface QueuePairOptions {
  tapFd: number;
  epoll: Epoll;
  /** epoll tokens this pair owns: the TAP fd and the reschedule eventfd. */
  tapToken: number;
  reschedToken: number;
  counters: Float64Array;
  memory: () => GuestMemory;
  log: Logger;
  budget?: number;
  /** Attach/detach this pair's TAP queue so the kernel steers frames only to running RX rings. */
  setTapQueueAttached?: (on: boolean) => void;
}

export class QueuePair {
  private rx: PairRing | null = null;
  private tx: PairRing | null = null;
  private readonly rxPath: RxPath;
  private readonly txPath: TxPath;
  private readonly resched: number;
  /** Events the TAP fd is registered for; -1 once it was removed from the epoll. */
  private tapEvents = -1;
  /** RX ring ran out of buffers: TAP reading is paused until the guest kicks RX. */
  private rxStarved = false;
  private rxBroken = false;
  private txBroken = false;
  /** The TX ring has been enabled since it started: a disable after that drops what the guest sends. */
  private txWasEnabled = false;
  private reschedPending = false;
  private readonly budget: number;
  private attached: boolean | null = null;
  /** The TAP queue failed (e.g. the interface was deleted): TX is discarded, RX stops. */
  private tapFailed = false;
  /** A guest can corrupt a ring again after every restart (a reset of its NIC): rate-limited. */
  private readonly corruptLog: WarnLimiter;

  constructor(private readonly o: QueuePairOptions) {
    this.corruptLog = new WarnLimiter(o.log);
    this.rxPath = new RxPath(o.tapFd, o.counters);
    this.txPath = new TxPath(o.tapFd, o.counters);
    this.budget = o.budget ?? 256;
    this.resched = eventfd();
    o.epoll.add(o.tapFd, 0, o.tapToken);
    o.epoll.add(this.resched, EPOLLIN, o.reschedToken);
    this.tapEvents = 0;
  }

  configure(rx: RxOptions, tx: TxOptions): void {
    this.rxPath.configure(rx);
    this.txPath.configure(tx);
  }

  startRx(ring: PairRing): void {
    this.rxPath.discardQueued();
    this.rx = ring;
    this.rxStarved = false;
    this.rxBroken = false;
    this.runRx();
  }

  /**
   * The RX ring was disabled (the guest lowered its queue-pair count): its TAP queue detaches now, before the kernel
   * steers more flows to it; what it already holds is dropped and counted (a detach would drop it unseen).
   */
  rxDisabled(): void {
    if (this.o.setTapQueueAttached && this.attached) this.rxPath.discardQueued();
    this.updateTap();
  }

  startTx(ring: PairRing): void {
    this.tx = ring;
    this.txBroken = false;
    this.txWasEnabled = false;
    this.runTx();
  }

  stopRx(): void {
    if (this.rx) this.rxPath.release(this.rx.queue);
    this.rx = null;
    this.updateTap();
  }

  stopTx(): void {
    if (this.tx) this.txPath.release(this.tx.queue);
    this.tx = null;
    this.updateTap();
  }

  /** The guest added RX buffers. */
  rxKick(): void {
    this.o.counters[COUNTER.rxKicks]++;
    this.rxStarved = false;
    this.runRx();
  }

  /** The guest queued frames to send. */
  txKick(): void {
    this.o.counters[COUNTER.txKicks]++;
    this.runTx();
  }

  /** Events for the tokens this pair owns; returns false if the token is not ours. */
  onFd(token: number, events: number): boolean {
    if (token === this.o.tapToken) {
      if (events & (EPOLLERR | EPOLLHUP)) {
        this.broken('tap', new Error(`TAP queue fd reported ${events & EPOLLERR ? 'EPOLLERR' : 'EPOLLHUP'}`));
        this.updateTap();
        return true;
      }
      if (events & EPOLLOUT) this.runTx();
      if (events & ~EPOLLOUT) this.runRx();
      return true;
    }
    if (token === this.o.reschedToken) {
      eventfdRead(this.resched);
      this.reschedPending = false;
      this.runTx();
      this.runRx();
      return true;
    }
    return false;
  }

  close(): void {
    try {
      this.o.epoll.remove(this.o.tapFd);
    } catch {
      // already gone with the epoll
    }
    closeQuiet(this.resched);
  }

  private runRx(): void {
    const ring = this.rx;
    // A disabled (or stopped) RX ring takes no frames: they wait in the TAP (and the kernel drops on overflow).
    if (ring === null || !ring.enabled || this.rxBroken || this.rxStarved || this.tapFailed) {
      this.updateTap();
      return;
    }
    let r: { result: PassResult; published: number };
    try {
      r = this.rxPath.run(ring.queue, this.o.memory(), this.budget);
    } catch (e) {
      this.rxBroken = this.broken('rx', e);
      this.updateTap();
      return;
    }
    if (r.published > 0) ring.notify();
    if (r.result === PassResult.NoBuffers) {
      this.rxStarved = true;
      this.o.counters[COUNTER.tapPauses]++;
    } else if (r.result === PassResult.Budget) {
      this.reschedule();
    }
    this.updateTap();
  }

  private runTx(): void {
    const ring = this.tx;
    if (ring === null || this.txBroken) return;
    if (ring.enabled) this.txWasEnabled = true;
    // A ring that starts disabled (vhost-user with PROTOCOL_FEATURES) is enabled by the next message: what the guest
    // queued before is sent then, as DPDK does; only a ring disabled after it ran drops its frames.
    else if (!this.txWasEnabled && !this.tapFailed) return;
    if (!ring.enabled || this.tapFailed) {
      this.discardTx(ring);
      return;
    }
    let r: { result: PassResult; published: number };
    try {
      r = this.txPath.run(ring.queue, this.o.memory(), this.budget);
    } catch (e) {
      this.txBroken = this.broken('tx', e);
      this.updateTap();
      return;
    }
    if (r.published > 0) ring.notify();
    if (r.result === PassResult.Budget) this.reschedule();
    this.updateTap();
  }

  /** TX ring disabled after it ran (or a dead TAP): frames are consumed and dropped (vhost-user "ring states"). */
  private discardTx(ring: PairRing): void {
    const q = ring.queue;
    let n = 0;
    try {
      for (;;) {
        const ch = q.pop();
        if (ch === null) break;
        q.pushUsed(ch.head, 0);
        n++;
      }
    } catch (e) {
      this.txBroken = this.broken('tx', e);
    }
    if (n > 0) {
      q.publishUsed();
      this.o.counters[COUNTER.txDropped] += n;
      ring.notify();
    }
  }

  /**
   * A corrupt ring (not one bad chain): stop using it until it is restarted. A TAP failure (any other
   * error comes from the TAP fd) stops the TAP side for good; the rings keep being drained.
   */
  private broken(which: string, e: unknown): boolean {
    if (e instanceof VirtqueueError) {
      this.corruptLog.error({ err: e, queue: which }, 'virtqueue is corrupt; ignoring it until the ring is restarted');
      return true;
    }
    if (!this.tapFailed) this.o.log.error({ err: e, queue: which }, 'TAP queue failed; dropping traffic of this queue pair');
    this.tapFailed = true;
    return false;
  }

  private reschedule(): void {
    if (this.reschedPending) return;
    this.reschedPending = true;
    eventfdWrite(this.resched);
  }

  private updateTap(): void {
    const running = this.rx !== null && this.rx.enabled && !this.rxBroken;
    if (this.o.setTapQueueAttached && running !== this.attached && !this.tapFailed) {
      try {
        this.o.setTapQueueAttached(running);
      } catch (e) {
        this.broken('tap', e);
      }
      this.attached = running;
    }
    if (this.tapFailed) {
      // A dead TAP fd keeps reporting EPOLLERR/EPOLLHUP whatever the mask: take it out of the epoll.
      if (this.tapEvents !== -1) {
        try {
          this.o.epoll.remove(this.o.tapFd);
        } catch {
          // already gone
        }
        this.tapEvents = -1;
      }
      return;
    }
    const wantIn = this.rx !== null && this.rx.enabled && !this.rxStarved && !this.rxBroken;
    const wantOut = this.tx !== null && this.txPath.isBlocked;
    const ev = (wantIn ? EPOLLIN : 0) | (wantOut ? EPOLLOUT : 0);
    if (ev === this.tapEvents) return;
    this.o.epoll.modify(this.o.tapFd, ev, this.o.tapToken);
    this.tapEvents = ev;
  }
}
