import { libc, koffi, check, SysError } from './libc.js';
import { closeQuiet } from './fd.js';

export const EPOLLIN = 0x001;
export const EPOLLPRI = 0x002;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 1 << 31;
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EINTR = 4;
const EVENT_SIZE = 12; // struct epoll_event is packed on x86-64: u32 events, u64 data

const epoll_create1 = libc.func('epoll_create1', 'int', ['int']);
const epoll_ctl = libc.func('epoll_ctl', 'int', ['int', 'int', 'int', 'void *']);
const epoll_wait = libc.func('epoll_wait', 'int', ['int', 'void *', 'int', 'int']);

/**
 * An epoll instance whose ready list is decoded into two reusable arrays: `tokens[i]` is the
 * u32 the caller registered the fd with and `events[i]` its event mask.
 */
export class Epoll {
  readonly fd: number;
  readonly tokens: Uint32Array;
  readonly events: Uint32Array;
  private readonly ready: Buffer;
  private readonly readyView: DataView;
  private readonly asyncReady: Buffer;
  private readonly ctlBuf = Buffer.alloc(EVENT_SIZE);

  constructor(readonly maxEvents = 64) {
    this.fd = check('epoll_create1', epoll_create1(EPOLL_CLOEXEC) as number);
    this.ready = Buffer.alloc(maxEvents * EVENT_SIZE);
    this.readyView = new DataView(this.ready.buffer, this.ready.byteOffset, this.ready.byteLength);
    this.asyncReady = Buffer.alloc(maxEvents * EVENT_SIZE);
    this.tokens = new Uint32Array(maxEvents);
    this.events = new Uint32Array(maxEvents);
  }

  private ctl(op: number, fd: number, events: number, token: number): void {
    this.ctlBuf.writeUInt32LE(events >>> 0, 0);
    this.ctlBuf.writeUInt32LE(token >>> 0, 4);
    this.ctlBuf.writeUInt32LE(0, 8);
    check('epoll_ctl', epoll_ctl(this.fd, op, fd, this.ctlBuf) as number, { op, fd });
  }

  add(fd: number, events: number, token: number): void {
    this.ctl(EPOLL_CTL_ADD, fd, events, token);
  }

  modify(fd: number, events: number, token: number): void {
    this.ctl(EPOLL_CTL_MOD, fd, events, token);
  }

  remove(fd: number): void {
    this.ctl(EPOLL_CTL_DEL, fd, 0, 0);
  }

  /** Blocks up to timeoutMs (-1 = forever); returns how many entries of tokens/events are valid. */
  wait(timeoutMs: number): number {
    const n = epoll_wait(this.fd, this.ready, this.maxEvents, timeoutMs) as number;
    if (n < 0) {
      if (koffi.errno() === EINTR) return 0;
      throw new SysError('epoll_wait', koffi.errno(), { epfd: this.fd });
    }
    this.decode(this.readyView, n);
    return n;
  }

  /** Same as wait() but on koffi's thread pool, leaving the event loop free. One at a time. */
  waitAsync(timeoutMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      epoll_wait.async(this.fd, this.asyncReady, this.maxEvents, timeoutMs, (err: unknown, n: number) => {
        if (err) return reject(err);
        if (n < 0) {
          // errno is thread-local to the pool thread; EINTR is the only expected failure.
          return resolve(0);
        }
        const b = this.asyncReady;
        this.decode(new DataView(b.buffer, b.byteOffset, b.byteLength), n);
        resolve(n);
      });
    });
  }

  private decode(view: DataView, n: number): void {
    for (let i = 0; i < n; i++) {
      this.events[i] = view.getUint32(i * EVENT_SIZE, true);
      this.tokens[i] = view.getUint32(i * EVENT_SIZE + 4, true);
    }
  }

  close(): void {
    closeQuiet(this.fd);
  }
}
