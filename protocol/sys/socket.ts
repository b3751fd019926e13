import { randomBytes } from 'node:crypto';
import { chmodSync, unlinkSync, existsSync, lstatSync, linkSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { libc, koffi, check, SysError, addressOf } from './libc.js';
import { closeQuiet, fcntl, setNonBlocking } from './fd.js';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;
const MSG_NOSIGNAL = 0x4000;
const MSG_CTRUNC = 0x8;
const EINTR = 4;
const EAGAIN = 11;
const ECONNRESET = 104;
const EINVAL = 22;
const EBADF = 9;
const SUN_PATH_MAX = 108;
const F_SETFD = 2;
const FD_CLOEXEC = 1;
export const SHUT_RDWR = 2;
/** The most fds one vhost-user message may carry (rust-vmm caps at 32). */
export const MAX_FDS = 32;

const socket_ = libc.func('socket', 'int', ['int', 'int', 'int']);
const bind_ = libc.func('bind', 'int', ['int', 'void *', 'uint']);
const listen_ = libc.func('listen', 'int', ['int', 'int']);
const accept4_ = libc.func('accept4', 'int', ['int', 'void *', 'void *', 'int']);
const connect_ = libc.func('connect', 'int', ['int', 'void *', 'uint']);
const socketpair_ = libc.func('socketpair', 'int', ['int', 'int', 'int', 'void *']);
const sendmsg_ = libc.func('sendmsg', 'long', ['int', 'void *', 'int']);
const recvmsg_ = libc.func('recvmsg', 'long', ['int', 'void *', 'int']);
const shutdown_ = libc.func('shutdown', 'int', ['int', 'int']);
const getsockopt_ = libc.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', 'void *']);
const send_ = libc.func('send', 'long', ['int', 'void *', 'ulong', 'int']);
const SOCK_DGRAM = 2;
const MSG_DONTWAIT = 0x40;
const MSG_PEEK = 0x2;
const SO_TYPE = 3;
const SO_ACCEPTCONN = 30;
const SO_DOMAIN = 39;

export class SocketError extends SysError {}

function sockaddrUn(path: string): Buffer {
  const p = Buffer.from(path);
  if (p.length >= SUN_PATH_MAX) throw new RangeError(`socket path too long (${p.length} >= ${SUN_PATH_MAX}): ${path}`);
  const sa = Buffer.alloc(2 + SUN_PATH_MAX);
  sa.writeUInt16LE(AF_UNIX, 0);
  p.copy(sa, 2);
  return sa;
}

/** Whether nothing, not even a dangling symlink, is at path (false where lstat fails otherwise: bind says why). */
function nothingAt(path: string): boolean {
  try {
    return lstatSync(path, { throwIfNoEntry: false }) === undefined;
  } catch {
    return false;
  }
}

/**
 * Listens on a Unix stream socket; a stale socket file at the path is removed first. `mode`, if given, replaces the
 * one the umask left on the socket file.
 */
export function unixListen(path: string, backlog = 16, mode?: number): number {
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
  // Bound under a name of its own and linked into place once listening: a front-end that connects as soon as the
  // path appears is never refused (ECONNREFUSED between bind and listen), and watchers see the path created. Where
  // the longer name does not fit, or something else is in the way, the socket is bound in place (bind says why).
  const staging = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}`);
  const at = Buffer.byteLength(staging) < SUN_PATH_MAX && nothingAt(path) ? staging : path;
  const fd = unixAt(SOCK_STREAM, at, 'bind');
  try {
    // Set before listen() and only for this file (the umask is process-wide).
    if (mode !== undefined) chmodSync(at, mode);
    check('listen', listen_(fd, backlog) as number, { path });
    if (at !== path) {
      linkSync(at, path);
      unlinkSync(at);
    }
    return fd;
  } catch (e) {
    closeQuiet(fd);
    if (at !== path) rmSync(at, { force: true });
    throw e;
  }
}

function sockoptInt(fd: number, opt: number): number {
  const v = new Int32Array(1);
  const len = new Uint32Array([4]);
  check('getsockopt', getsockopt_(fd, SOL_SOCKET, opt, v, len) as number, { fd, opt });
  return v[0];
}

/**
 * Why `fd` cannot be taken over as a listening socket (`--fd=N`), or null when it can: it must be a Unix
 * stream socket already in listen().
 */
export function listenerProblem(fd: number): string | null {
  try {
    const ok = sockoptInt(fd, SO_DOMAIN) === AF_UNIX && sockoptInt(fd, SO_TYPE) === SOCK_STREAM && sockoptInt(fd, SO_ACCEPTCONN) === 1;
    return ok ? null : 'not a listening Unix stream socket';
  } catch (e) {
    const errno = e instanceof SysError ? e.errno : EINVAL;
    return errno === EBADF ? 'not an open file descriptor' : 'not a listening Unix stream socket';
  }
}

/**
 * Takes over a listening socket a parent passed down (the vhost-user backend convention `--fd=N`); it is
 * made close-on-exec and blocking.
 */
export function adoptListener(fd: number): number {
  const problem = listenerProblem(fd);
  if (problem !== null) throw new SocketError(`take over listening socket fd ${fd} (${problem})`, EINVAL, { fd });
  setNonBlocking(fd, false);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

/** A new AF_UNIX socket of `type`, bound or connected to `path`; closed again if that fails. */
function unixAt(type: number, path: string, op: 'bind' | 'connect'): number {
  const fd = check('socket', socket_(AF_UNIX, type | SOCK_CLOEXEC, 0) as number);
  const sa = sockaddrUn(path);
  const r = (op === 'bind' ? bind_ : connect_)(fd, sa, sa.length) as number;
  if (r < 0) {
    const e = koffi.errno();
    closeQuiet(fd);
    throw new SysError(op, e, { path });
  }
  return fd;
}

export function unixConnect(path: string): number {
  return unixAt(SOCK_STREAM, path, 'connect');
}

/** A Unix datagram socket connected to `path` (syslog's /dev/log). */
export function unixDgramConnect(path: string): number {
  return unixAt(SOCK_DGRAM, path, 'connect');
}

/** A Unix datagram socket bound to `path` (tests stand in for /dev/log with it). */
export function unixDgramBind(path: string): number {
  return unixAt(SOCK_DGRAM, path, 'bind');
}

/** One datagram, never blocking and never raising SIGPIPE; returns bytes sent or -errno. */
export function sendDgram(fd: number, data: Uint8Array): number {
  const r = send_(fd, data, data.byteLength, MSG_DONTWAIT | MSG_NOSIGNAL) as number;
  return r < 0 ? -koffi.errno() : r;
}

export function accept(fd: number): number {
  for (;;) {
    const r = accept4_(fd, null, null, SOCK_CLOEXEC) as number;
    if (r < 0 && koffi.errno() === EINTR) continue;
    return check('accept4', r, { fd });
  }
}

export function acceptAsync(fd: number): Promise<number> {
  return new Promise((resolve, reject) => {
    accept4_.async(fd, null, null, SOCK_CLOEXEC, (err: unknown, r: number) => {
      if (err) return reject(err);
      if (r < 0) return reject(new SysError('accept4', EINTR, { fd, note: 'errno unavailable from pool thread' }));
      resolve(r);
    });
  });
}

export function socketPair(): [number, number] {
  const fds = new Int32Array(2);
  check('socketpair', socketpair_(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) as number);
  return [fds[0], fds[1]];
}

export function shutdown(fd: number, how = SHUT_RDWR): void {
  shutdown_(fd, how);
}

const cmsgSpace = (nfds: number) => 16 + ((nfds * 4 + 7) & ~7);

/** Scratch msghdr/iovec/cmsg storage; one per in-flight call (sync calls share one). */
class MsgScratch {
  readonly hdr = Buffer.alloc(56);
  readonly iov = Buffer.alloc(16);
  readonly control = Buffer.alloc(cmsgSpace(MAX_FDS));

  prepare(data: Uint8Array, len: number, controlLen: number): void {
    this.iov.writeBigUInt64LE(addressOf(data), 0);
    this.iov.writeBigUInt64LE(BigInt(len), 8);
    this.hdr.fill(0);
    this.hdr.writeBigUInt64LE(addressOf(this.iov), 16);
    this.hdr.writeBigUInt64LE(1n, 24);
    if (controlLen > 0) {
      this.hdr.writeBigUInt64LE(addressOf(this.control), 32);
      this.hdr.writeBigUInt64LE(BigInt(controlLen), 40);
    }
  }

  /** Received fds from SCM_RIGHTS; flags truncation (the caller treats that as an error). */
  parseFds(): { fds: number[]; truncated: boolean } {
    const controlLen = Number(this.hdr.readBigUInt64LE(40));
    const flags = this.hdr.readInt32LE(48);
    const fds: number[] = [];
    let off = 0;
    while (off + 16 <= controlLen) {
      const len = Number(this.control.readBigUInt64LE(off));
      if (len < 16) break;
      const level = this.control.readInt32LE(off + 8);
      const type = this.control.readInt32LE(off + 12);
      if (level === SOL_SOCKET && type === SCM_RIGHTS) {
        for (let p = off + 16; p + 4 <= off + len; p += 4) fds.push(this.control.readInt32LE(p));
      }
      off += (len + 7) & ~7;
    }
    return { fds, truncated: (flags & MSG_CTRUNC) !== 0 };
  }
}

const syncScratch = new MsgScratch();

/** Sends data with optional fds attached (SCM_RIGHTS). Returns bytes sent. */
/**
 * sendmsg of data with fds (SCM_RIGHTS); bytes sent. `dontWait`: this call does not block on a full socket
 * buffer (the socket itself stays blocking) and returns -1 instead.
 */
export function sendMsg(fd: number, data: Uint8Array, fds: number[] = [], dontWait = false): number {
  if (fds.length > MAX_FDS) throw new RangeError(`too many fds (${fds.length} > ${MAX_FDS})`);
  const s = syncScratch;
  const clen = fds.length ? cmsgSpace(fds.length) : 0;
  s.prepare(data, data.byteLength, clen);
  if (fds.length) {
    s.control.fill(0, 0, clen);
    s.control.writeBigUInt64LE(BigInt(16 + fds.length * 4), 0);
    s.control.writeInt32LE(SOL_SOCKET, 8);
    s.control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => s.control.writeInt32LE(f, 16 + i * 4));
  }
  for (;;) {
    const r = Number(sendmsg_(fd, s.hdr, MSG_NOSIGNAL | (dontWait ? MSG_DONTWAIT : 0)));
    if (r < 0 && koffi.errno() === EINTR) continue;
    if (r < 0 && dontWait && koffi.errno() === EAGAIN) return -1;
    return check('sendmsg', r, { fd });
  }
}

export interface RecvResult {
  /** Bytes received; 0 means the peer closed; -1 means a non-blocking socket had nothing. */
  n: number;
  fds: number[];
}

function finishRecv(call: string, fd: number, r: number, errno: number, s: MsgScratch): RecvResult {
  if (r < 0) {
    if (errno === EAGAIN) return { n: -1, fds: [] };
    throw new SysError(call, errno, { fd });
  }
  const { fds, truncated } = s.parseFds();
  if (truncated) {
    fds.forEach(closeQuiet);
    throw new SysError(call, 105 /* ENOBUFS */, { fd, reason: 'ancillary data truncated (too many fds)' });
  }
  return { n: r, fds };
}

/** Receives up to `len` bytes and any fds sent with them (marked close-on-exec). */
export function recvMsg(fd: number, buf: Uint8Array, len = buf.byteLength): RecvResult {
  const s = syncScratch;
  s.prepare(buf, len, s.control.length);
  for (;;) {
    const r = Number(recvmsg_(fd, s.hdr, MSG_CMSG_CLOEXEC));
    if (r < 0 && koffi.errno() === EINTR) continue;
    return finishRecv('recvmsg', fd, r, r < 0 ? koffi.errno() : 0, s);
  }
}

const peekByte = new Uint8Array(1);
/** After a recvmsg failed on another thread: 0 if the stream has ended (the peer is gone), else an errno for it. */
function failedRecvCause(fd: number): number {
  const s = syncScratch;
  s.prepare(peekByte, 1, 0);
  const r = Number(recvmsg_(fd, s.hdr, MSG_PEEK | MSG_DONTWAIT));
  if (r === 0) return 0;
  const e = r < 0 ? koffi.errno() : 0;
  return e === ECONNRESET ? 0 : 5; // EIO
}

/**
 * What a stream socket holds, looking without reading or blocking: 'closed' (end of stream, or reset), 'data', or
 * 'empty' (a readiness seen earlier is stale: someone read it since).
 */
export function peekState(fd: number): 'closed' | 'data' | 'empty' {
  const s = syncScratch;
  s.prepare(peekByte, 1, 0);
  const r = Number(recvmsg_(fd, s.hdr, MSG_PEEK | MSG_DONTWAIT));
  if (r > 0) return 'data';
  if (r === 0) return 'closed';
  return koffi.errno() === ECONNRESET ? 'closed' : 'empty';
}

/** recvMsg on koffi's thread pool, so a blocking socket does not stall the event loop. */
export function recvMsgAsync(fd: number, buf: Uint8Array, len = buf.byteLength): Promise<RecvResult> {
  const s = new MsgScratch();
  s.prepare(buf, len, s.control.length);
  return new Promise((resolve, reject) => {
    recvmsg_.async(fd, s.hdr, MSG_CMSG_CLOEXEC, (err: unknown, r: number | bigint) => {
      if (err) return reject(err);
      try {
        const n = Number(r);
        // errno of a pool thread is not readable here: a peek from this thread tells a peer that went away with a
        // reply unread (ECONNRESET, then end of stream) from other failures, reported as EIO.
        const cause = n < 0 ? failedRecvCause(fd) : 0;
        resolve(finishRecv('recvmsg', fd, n < 0 && cause === 0 ? 0 : n, cause, s));
      } catch (e) {
        reject(e);
      }
    });
  });
}
