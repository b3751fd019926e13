import { logger } from '../../protocol/log.js';
import { Epoll, EPOLLIN } from '../../protocol/sys/epoll.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';

const log = logger('virtio-loop');

/**
 * Main-thread readiness loop for the built-in virtio devices: an Epoll over their kick eventfds,
 * waited on koffi's thread pool (Epoll.waitAsync) so the Node event loop stays free.
 */
export class EventLoop {
  private readonly epoll = new Epoll(32);
  private readonly handlers = new Map<number, { fd: number; fn: (events: number) => void }>();
  private readonly byFd = new Map<number, number>();
  private readonly wake = eventfd();
  private nextToken = 1;
  private running: Promise<void> | null = null;
  private stopping = false;

  constructor() {
    this.epoll.add(this.wake, EPOLLIN, 0);
  }

  add(fd: number, fn: (events: number) => void): void {
    const token = this.nextToken++;
    this.epoll.add(fd, EPOLLIN, token);
    this.handlers.set(token, { fd, fn });
    this.byFd.set(fd, token);
  }

  remove(fd: number): void {
    const token = this.byFd.get(fd);
    if (token === undefined) return;
    this.byFd.delete(fd);
    this.handlers.delete(token);
    try {
      this.epoll.remove(fd);
    } catch (err) {
      log.debug({ err, fd }, 'epoll remove');
    }
  }

  start(): void {
    if (this.running) return;
    this.stopping = false;
    this.running = this.run();
  }

  /** Runs one round synchronously (tests, or callers with their own loop). Returns events handled. */
  poll(timeoutMs = 0): number {
    const n = this.epoll.wait(timeoutMs);
    this.dispatch(n);
    return n;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    eventfdWrite(this.wake);
    await this.running;
    this.running = null;
  }

  close(): void {
    this.epoll.close();
    closeQuiet(this.wake);
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      const n = await this.epoll.waitAsync(-1);
      this.dispatch(n);
    }
  }

  private dispatch(n: number): void {
    for (let i = 0; i < n; i++) {
      const token = this.epoll.tokens[i];
      if (token === 0) {
        eventfdRead(this.wake);
        continue;
      }
      const h = this.handlers.get(token);
      if (!h) continue;
      try {
        h.fn(this.epoll.events[i]);
      } catch (err) {
        log.error({ err, fd: h.fd }, 'virtio handler failed');
      }
    }
  }
}
