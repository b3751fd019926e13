import { closeQuiet } from '../sys/fd.js';
import { Epoll, EPOLLIN, EPOLLHUP, EPOLLERR, EPOLLOUT } from '../sys/epoll.js';
import { recvMsg, recvMsgAsync, sendMsg, shutdown, type RecvResult } from '../sys/socket.js';
import { decodeHeader, encodeMessage, type Header, type Message } from './codec.js';
import { VhostUserDisconnectedError, VhostUserError, VhostUserProtocolError, VhostUserTimeoutError } from './errors.js';
import { HEADER_SIZE, MAX_FDS, MAX_PAYLOAD, requestName } from './messages.js';

/** A message as read off the socket, before its payload is decoded. */
export interface RawMessage {
  header: Header;
  payload: Uint8Array;
  fds: number[];
}

/**
 * How long a back-end's send waits for a front-end that stops reading (its socket buffer full) before the connection is
 * dropped. A front-end waits as long as for a reply instead (see VhostUserFrontend).
 */
const SEND_TIMEOUT_MS = 1000;

/**
 * Message framing over a connected AF_UNIX stream socket: header, payload and the fds that came with them.
 * Receive comes in two flavours: async (daemon main thread, event loop stays free) and sync with a timeout
 * (front-end requests, which always wait for their reply).
 */
export class VhostUserChannel {
  private readonly hdr = new Uint8Array(HEADER_SIZE);
  private poller: Epoll | null = null;
  private closed = false;

  constructor(
    readonly fd: number,
    private readonly sendTimeoutMs = SEND_TIMEOUT_MS,
  ) {}

  /**
   * Sends a message. A peer that leaves its socket full is waited for at most sendTimeoutMs, then dropped: a
   * blocking send would freeze the caller's thread (the daemon's main thread: no signal handled, no stop).
   */
  send(msg: Message): void {
    this.checkOpen(msg.request);
    const bytes = encodeMessage(msg);
    let off = 0;
    let fds = msg.fds;
    let deadline = 0;
    while (off < bytes.length) {
      const n = sendMsg(this.fd, off === 0 ? bytes : bytes.subarray(off), fds, true);
      if (n < 0) {
        if (deadline === 0) deadline = Date.now() + this.sendTimeoutMs;
        if (!this.waitWritable(deadline)) throw new VhostUserDisconnectedError('peer stopped reading', { request: requestName(msg.request) });
        continue;
      }
      if (n === 0) throw new VhostUserDisconnectedError('peer stopped reading', { request: requestName(msg.request) });
      off += n;
      fds = [];
    }
  }

  /** Waits until the socket takes more data or the deadline passes; false at the deadline. */
  private waitWritable(deadline: number): boolean {
    const ep = new Epoll(1);
    try {
      ep.add(this.fd, EPOLLOUT, 0);
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) return false;
        if (ep.wait(left) > 0) return true;
      }
    } finally {
      ep.close();
    }
  }

  /** Next message, or null when the peer closed the socket cleanly between messages. */
  async recvAsync(): Promise<RawMessage | null> {
    if (this.closed) return null;
    return this.recv((buf, len) => recvMsgAsync(this.fd, buf, len));
  }

  /** Next message, waiting at most timeoutMs for each read; null on a clean close. */
  recvSync(timeoutMs: number): RawMessage | null {
    this.checkOpen();
    let started = false;
    try {
      return this.recvWith((buf, len) => {
        this.waitReadable(timeoutMs);
        const r = recvMsg(this.fd, buf, len);
        if (r.n > 0) started = true;
        return r;
      });
    } catch (e) {
      // Part of a message read and the rest late: what comes next is no message boundary. The stream is done.
      if (!(e instanceof VhostUserTimeoutError) || !started) throw e;
      this.close();
      throw new VhostUserProtocolError('the peer stopped in the middle of a message', { timeoutMs });
    }
  }

  /** Wakes a pending recvAsync (it returns null) and closes the socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    shutdown(this.fd);
    closeQuiet(this.fd);
    this.poller?.close();
    this.poller = null;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** After close the fd number may already belong to something else (an eventfd, another peer's socket). */
  private checkOpen(request?: number): void {
    if (this.closed) throw new VhostUserDisconnectedError('the connection to the back-end is closed', request === undefined ? {} : { request: requestName(request) });
  }

  private waitReadable(timeoutMs: number): void {
    if (this.poller === null) {
      this.poller = new Epoll(4);
      this.poller.add(this.fd, EPOLLIN, 0);
    }
    // Epoll.wait answers 0 on EINTR too (a profiler's SIGPROF): only a passed deadline is a timeout.
    const deadline = Date.now() + timeoutMs;
    let n = this.poller.wait(timeoutMs);
    while (n === 0 && timeoutMs >= 0 && Date.now() < deadline) n = this.poller.wait(Math.max(1, deadline - Date.now()));
    if (n === 0) throw new VhostUserTimeoutError('timed out waiting for the peer', { timeoutMs });
    if (this.poller.events[0] & (EPOLLHUP | EPOLLERR) && !(this.poller.events[0] & EPOLLIN)) {
      throw new VhostUserDisconnectedError('peer hung up');
    }
  }

  private async recv(read: (buf: Uint8Array, len: number) => Promise<RecvResult>): Promise<RawMessage | null> {
    const fds: number[] = [];
    try {
      if (!(await this.fill(this.hdr, fds, read, true))) return null;
      const header = decodeHeader(this.hdr);
      const payload = new Uint8Array(header.size);
      if (header.size > 0) await this.fill(payload, fds, read, false);
      this.checkFdCount(fds, header);
      return { header, payload, fds };
    } catch (e) {
      fds.forEach(closeQuiet);
      throw e;
    }
  }

  private recvWith(read: (buf: Uint8Array, len: number) => RecvResult): RawMessage | null {
    const fds: number[] = [];
    try {
      if (!this.fillSync(this.hdr, fds, read, true)) return null;
      const header = decodeHeader(this.hdr);
      const payload = new Uint8Array(header.size);
      if (header.size > 0) this.fillSync(payload, fds, read, false);
      this.checkFdCount(fds, header);
      return { header, payload, fds };
    } catch (e) {
      fds.forEach(closeQuiet);
      throw e;
    }
  }

  private checkFdCount(fds: number[], h: Header): void {
    if (fds.length > MAX_FDS) {
      throw new VhostUserProtocolError('too many fds on one message', { fds: fds.length, request: requestName(h.request) });
    }
    if (h.size > MAX_PAYLOAD) throw new VhostUserProtocolError('payload too large', { size: h.size });
  }

  /** Reads exactly buf.length bytes; false if EOF came before the first byte of a message. */
  private async fill(
    buf: Uint8Array, fds: number[], read: (b: Uint8Array, len: number) => Promise<RecvResult>, atStart: boolean,
  ): Promise<boolean> {
    let off = 0;
    while (off < buf.length) {
      const r = await read(off === 0 ? buf : buf.subarray(off), buf.length - off);
      fds.push(...r.fds);
      if (r.n === 0) return this.eof(off, atStart);
      if (r.n < 0) continue;
      off += r.n;
    }
    return true;
  }

  private fillSync(buf: Uint8Array, fds: number[], read: (b: Uint8Array, len: number) => RecvResult, atStart: boolean): boolean {
    let off = 0;
    while (off < buf.length) {
      const r = read(off === 0 ? buf : buf.subarray(off), buf.length - off);
      fds.push(...r.fds);
      if (r.n === 0) return this.eof(off, atStart);
      if (r.n < 0) continue;
      off += r.n;
    }
    return true;
  }

  private eof(off: number, atStart: boolean): false {
    if (atStart && off === 0) return false;
    throw new VhostUserProtocolError(atStart ? 'short header' : 'connection closed inside a payload', { got: off });
  }
}
