import { performance } from 'node:perf_hooks';
import { HANDLER_TOKEN_BASE, type CreateQueueHandler, type QueueHandler, type QueueWorkerContext, type VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { EPOLLIN } from '../../protocol/sys/epoll.js';
import { eventfd, eventfdRead, eventfdWrite, closeQuiet } from '../../protocol/sys/fd.js';
import { schedYield } from '../../protocol/sys/proc.js';
import { BlkQueueEngine } from './engine.js';
import { isBlkWorkerData, type BlkWorkerData } from './worker-data.js';

const COMPLETION_TOKEN = HANDLER_TOKEN_BASE + 1;
// Polling yields the CPU between empty checks: on a small host the driver may need this core.
const YIELD = process.env.KUMO_BLK_POLL_YIELD !== '0';
const MAX_POLL_MS = 2;

/** One blk queue in a daemon worker thread: kicks → engine.processAvail, ring eventfd → completions. */
class BlkQueueHandler implements QueueHandler {
  private readonly engine: BlkQueueEngine;
  private readonly efd: number;
  private current: VringHandle | null = null;
  private readonly notifyCurrent = (): void => this.current?.notify();

  constructor(private readonly ctx: QueueWorkerContext, private readonly cfg: BlkWorkerData) {
    // Completions of the ring and of the copy helper both wake this thread through it.
    this.efd = eventfd();
    try {
      this.engine = new BlkQueueEngine(
        { fd: cfg.fd, size: cfg.size, readonly: cfg.readonly, memoryBacked: cfg.memoryBacked, writesPunted: cfg.writesPunted, alignment: cfg.alignment, logicalBlock: cfg.logicalBlock, blockDevice: cfg.blockDevice, serial: cfg.serial, flags: new Int32Array(cfg.flags) },
        { queueSize: cfg.queueSize, completion: cfg.completion, log: ctx.log, wakeFd: this.efd },
      );
    } catch (e) {
      closeQuiet(this.efd);
      throw e;
    }
    try {
      // Every completion signals (not IORING_REGISTER_EVENTFD_ASYNC): completions posted from task
      // work in this thread would not signal an async-only eventfd and could be left unreaped.
      this.engine.ring.registerEventfd(this.efd);
      ctx.epoll.add(this.efd, EPOLLIN, COMPLETION_TOKEN);
    } catch (e) {
      this.engine.close();
      closeQuiet(this.efd);
      throw e;
    }
  }

  onStart(q: VringHandle): void {
    this.current = q;
    this.engine.attach(q.queue, this.ctx.memory());
  }

  onStop(q: VringHandle): void {
    this.engine.attach(q.queue, this.ctx.memory());
    if (this.engine.detach()) q.notify();
    this.current = null;
  }

  /**
   * SET_VRING_ENABLE 0: the requests in flight finish (and are published) before the front-end hears back. Cloud
   * Hypervisor pauses a device this way and then takes its last dirty log (a new SET_LOG_BASE): a request completing
   * after would write guest pages marked in a log nobody reads, and its destination starts the ring past it.
   */
  onDisable(q: VringHandle): void {
    this.engine.attach(q.queue, this.ctx.memory());
    this.engine.drain();
    if (this.engine.processCompletions()) q.notify();
  }

  process(q: VringHandle): void {
    this.current = q;
    const eng = this.engine;
    eng.attach(q.queue, this.ctx.memory());
    if (eng.processAvail(this.notifyCurrent)) q.notify();
    if (this.cfg.pollQueue) this.poll(q);
  }

  /**
   * Busy-polls the avail ring (and the completion queue) for a short window after each burst of
   * work, with driver kicks disabled meanwhile so the driver saves its eventfd write too.
   */
  private poll(q: VringHandle): void {
    const eng = this.engine;
    const windowMs = this.cfg.pollUs / 1000;
    const queue = q.queue;
    queue.disableNotifications();
    let deadline = performance.now() + windowMs;
    // Hand the thread back to the epoll loop now and then so control messages are not starved.
    const giveUp = performance.now() + MAX_POLL_MS;
    for (;;) {
      const r = eng.pollStep();
      if (r !== 0) {
        if (r === 3) q.notify();
        deadline = performance.now() + windowMs;
        continue;
      }
      const now = performance.now();
      if (now >= giveUp) {
        // Kicks stay off until enabled; if work is already waiting, wake ourselves through the epoll loop.
        if (queue.enableNotifications()) eventfdWrite(this.efd);
        return;
      }
      if (now < deadline) {
        if (YIELD) schedYield();
        continue;
      }
      if (!queue.enableNotifications()) return;
      // Work arrived while kicks were off: keep going.
      queue.disableNotifications();
      deadline = performance.now() + windowMs;
    }
  }

  /** Memory is about to change: reap every in-flight request (their iovecs point into the old mapping) and publish. */
  drain(): void {
    const q = this.current;
    if (q === null) return;
    this.engine.attach(q.queue, this.ctx.memory());
    this.engine.drain();
    if (this.engine.processCompletions()) q.notify();
  }

  /** Worker exit (the ring is already stopped): closes the io_uring and its eventfd. */
  close(): void {
    this.ctx.epoll.remove(this.efd);
    this.engine.close();
    closeQuiet(this.efd);
  }

  /** The ring's eventfd: async completions arrived (or the poller asked to be called again). */
  onFd(token: number): void {
    if (token !== COMPLETION_TOKEN) return;
    eventfdRead(this.efd);
    const q = this.current;
    if (q === null) return;
    this.engine.attach(q.queue, this.ctx.memory());
    if (this.engine.processCompletions()) q.notify();
    if (q.enabled && this.engine.hasAvailable()) this.process(q);
  }
}

export const createQueueHandler: CreateQueueHandler = (ctx) => {
  if (!isBlkWorkerData(ctx.data)) throw new TypeError('vhost-user-blk worker: bad worker data');
  return new BlkQueueHandler(ctx, ctx.data);
};
