import { libc, koffi, check, SysError, addressOf } from './libc.js';

export const O_RDONLY = 0o0;
export const O_WRONLY = 0o1;
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECTORY = 0o200000;
export const O_NOFOLLOW = 0o400000;
export const O_DIRECT = 0o40000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
const O_ACCMODE = 0o3;
export const EFD_SEMAPHORE = 0o1;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
const F_GETFL = 3;
const F_SETFL = 4;
const F_DUPFD_CLOEXEC = 1030;
export const EAGAIN = 11;
/** preadv2 with RWF_NOWAIT on a file system without non-blocking reads (FUSE, tmpfs), or an unknown flag on old kernels. */
export const EOPNOTSUPP = 95;
export const EINVAL = 22;
const EINTR = 4;

const close_ = libc.func('close', 'int', ['int']);
const read_ = libc.func('read', 'long', ['int', 'void *', 'size_t']);
const write_ = libc.func('write', 'long', ['int', 'void *', 'size_t']);
const readv_ = libc.func('readv', 'long', ['int', 'void *', 'int']);
const writev_ = libc.func('writev', 'long', ['int', 'void *', 'int']);
const preadv_ = libc.func('preadv', 'long', ['int', 'void *', 'int', 'int64']);
const pwritev_ = libc.func('pwritev', 'long', ['int', 'void *', 'int', 'int64']);
const pread_ = libc.func('pread', 'long', ['int', 'void *', 'size_t', 'int64']);
const pwrite_ = libc.func('pwrite', 'long', ['int', 'void *', 'size_t', 'int64']);
const pwritev2_ = libc.func('pwritev2', 'long', ['int', 'void *', 'int', 'int64', 'int']);
const preadv2_ = libc.func('preadv2', 'long', ['int', 'void *', 'int', 'int64', 'int']);
const eventfd_ = libc.func('eventfd', 'int', ['uint', 'int']);
const timerfdCreate_ = libc.func('timerfd_create', 'int', ['int', 'int']);
const timerfdSettime_ = libc.func('timerfd_settime', 'int', ['int', 'int', 'void *', 'void *']);
const fcntl_ = libc.func('fcntl', 'int', ['int', 'int', 'long']);
const open_ = libc.func('open', 'int', ['str', 'int', 'uint']);
const pipe2_ = libc.func('pipe2', 'int', ['void *', 'int']);
const dup_ = libc.func('dup', 'int', ['int']);

export function close(fd: number): void {
  check('close', close_(fd) as number, { fd });
}

/** Close without throwing: for cleanup paths where the fd may already be gone. */
export function closeQuiet(fd: number): void {
  if (fd >= 0) close_(fd);
}

function retryable(call: string, ret: number, fd: number): number {
  if (ret >= 0) return ret;
  const e = koffi.errno();
  if (e === EAGAIN) return -1;
  throw new SysError(call, e, { fd });
}

/** Bytes read; -1 when a non-blocking fd has nothing; 0 at EOF. */
export function read(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  for (;;) {
    const r = Number(read_(fd, buf, len));
    if (r < 0 && koffi.errno() === EINTR) continue;
    return retryable('read', r, fd);
  }
}

/** Bytes written; -1 when a non-blocking fd would block. */
export function write(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  for (;;) {
    const r = Number(write_(fd, buf, len));
    if (r < 0 && koffi.errno() === EINTR) continue;
    return retryable('write', r, fd);
  }
}

/**
 * A reusable native iovec array. Pointers are stored as two u32 halves so hot paths can push a
 * plain number address (guest mappings are below 2^53) without BigInt work.
 */
export class IoVecList {
  readonly buf: Buffer;
  private readonly u32: Uint32Array;
  readonly ptr: bigint;
  count = 0;
  totalLength = 0;
  constructor(readonly max: number) {
    this.buf = Buffer.alloc(max * 16);
    this.u32 = new Uint32Array(this.buf.buffer, this.buf.byteOffset, max * 4);
    this.ptr = addressOf(this.buf);
  }
  clear(): void {
    this.count = 0;
    this.totalLength = 0;
  }
  get full(): boolean {
    return this.count >= this.max;
  }
  push(ptr: bigint | number, len: number): void {
    if (this.count >= this.max) throw new RangeError(`iovec list full (${this.max})`);
    const p = typeof ptr === 'bigint' ? Number(ptr) : ptr;
    const i = this.count * 4;
    this.u32[i] = p % 0x1_0000_0000;
    this.u32[i + 1] = Math.floor(p / 0x1_0000_0000);
    this.u32[i + 2] = len;
    this.u32[i + 3] = 0;
    this.count++;
    this.totalLength += len;
  }
  /** Entry i's address (below 2^53) and length. */
  address(i: number): number {
    return this.u32[i * 4] + this.u32[i * 4 + 1] * 0x1_0000_0000;
  }
  length(i: number): number {
    return this.u32[i * 4 + 2];
  }
  /** Fills head with this list's first `bytes` bytes and tail with the rest, cutting an entry where needed. */
  splitInto(bytes: number, head: IoVecList, tail: IoVecList): void {
    head.clear();
    tail.clear();
    let left = bytes;
    for (let i = 0; i < this.count; i++) {
      const addr = this.address(i);
      const len = this.length(i);
      const h = Math.min(left, len);
      if (h > 0) head.push(addr, h);
      if (len > h) tail.push(addr + h, len - h);
      left -= h;
    }
  }
}

export function readv(fd: number, iov: IoVecList): number {
  return retryable('readv', Number(readv_(fd, iov.ptr, iov.count)), fd);
}

export function writev(fd: number, iov: IoVecList): number {
  return retryable('writev', Number(writev_(fd, iov.ptr, iov.count)), fd);
}

/** A file offset or size from the wire: a number below 2^53, a bigint above (FUSE u64 fields, see struct `x64`). */
export type FileOffset = number | bigint;

/** As an int64 argument: a u64 from 2^63 up turns negative, which the kernel refuses (EINVAL), as for any caller. */
export function int64(x: FileOffset): number | bigint {
  return typeof x === 'bigint' ? BigInt.asIntN(64, x) : x;
}

export function preadv(fd: number, iov: IoVecList, offset: FileOffset): number {
  return retryable('preadv', Number(preadv_(fd, iov.ptr, iov.count, int64(offset))), fd);
}

let restHead: IoVecList | null = null;
let restTail: IoVecList | null = null;

/**
 * After a preadv of `iov` at `offset` returned `n` bytes, reads on until `iov` is full, the end of the file (0) or an
 * error (the bytes read so far are then the answer); returns the total. Local file systems fill a read up to the end
 * of the file, but a FUSE or network one may answer short before it (FOPEN_DIRECT_IO), and a short READ reply tells
 * the guest its file ends there.
 */
export function preadvRest(fd: number, iov: IoVecList, offset: FileOffset, n: number): number {
  let total = n;
  while (total > 0 && total < iov.totalLength) {
    const at = typeof offset === 'bigint' ? offset + BigInt(total) : offset + total;
    if (typeof at === 'number' && at > Number.MAX_SAFE_INTEGER) break;
    if (restTail === null || restTail.max < iov.count) {
      restHead = new IoVecList(iov.max);
      restTail = new IoVecList(iov.max);
    }
    iov.splitInto(total, restHead as IoVecList, restTail);
    const r = Number(preadv_(fd, restTail.ptr, restTail.count, int64(at)));
    if (r < 0 && koffi.errno() === EINTR) continue;
    if (r <= 0) break;
    total += r;
  }
  return total;
}

/** One positioned vector call, retried on EINTR; bytes moved or -errno. */
function positionedIo(f: (fd: number, addr: number, count: number, offset: number) => unknown, fd: number, addr: number, count: number, offset: number): number {
  for (;;) {
    const r = Number(f(fd, addr, count, offset));
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== EINTR) return -e;
  }
}

/** preadv over a native iovec array at `iovAddr`; returns bytes read or -errno (no exception). */
export function preadvRaw(fd: number, iovAddr: number, count: number, offset: number): number {
  return positionedIo(preadv_, fd, iovAddr, count, offset);
}

/** preadv2 flag: read only what is in the page cache (-EAGAIN, or a short count, where the rest would wait). */
export const RWF_NOWAIT = 0x8;

const preadvNowait = (fd: number, addr: number, count: number, offset: number): unknown => preadv2_(fd, addr, count, offset, RWF_NOWAIT);

/** preadv2(RWF_NOWAIT) over a native iovec array at `iovAddr`; returns bytes read or -errno (no exception). */
export function preadvCachedRaw(fd: number, iovAddr: number, count: number, offset: number): number {
  return positionedIo(preadvNowait, fd, iovAddr, count, offset);
}

/** pwritev over a native iovec array at `iovAddr`; returns bytes written or -errno (no exception). */
export function pwritevRaw(fd: number, iovAddr: number, count: number, offset: number): number {
  return positionedIo(pwritev_, fd, iovAddr, count, offset);
}

/** pread into native memory at `addr`; returns bytes read or -errno (no exception). */
export function preadRaw(fd: number, addr: number, len: number, offset: number): number {
  return positionedIo(pread_, fd, addr, len, offset);
}

/** pwrite from native memory at `addr`; returns bytes written or -errno (no exception). */
export function pwriteRaw(fd: number, addr: number, len: number, offset: number): number {
  return positionedIo(pwrite_, fd, addr, len, offset);
}

/** pwritev2 flag: write at the end of the file, whatever the offset (as O_APPEND, for this call only). */
export const RWF_APPEND = 0x10;

/** Bytes written; -1 when a non-blocking fd would block. `flags`: RWF_* (pwritev2). */
export function pwritev(fd: number, iov: IoVecList, offset: FileOffset, flags = 0): number {
  const r = flags === 0 ? pwritev_(fd, iov.ptr, iov.count, int64(offset)) : pwritev2_(fd, iov.ptr, iov.count, int64(offset), flags);
  return retryable('pwritev', Number(r), fd);
}

export function eventfd(initval = 0, flags = EFD_CLOEXEC | EFD_NONBLOCK): number {
  return check('eventfd', eventfd_(initval, flags) as number);
}

const efdScratch = new BigUint64Array(1);
const efdBytes = new Uint8Array(efdScratch.buffer);
const one = new BigUint64Array([1n]);

export function eventfdWrite(fd: number, n = 1): void {
  const src = n === 1 ? one : new BigUint64Array([BigInt(n)]);
  const r = Number(write_(fd, src, 8));
  // EAGAIN means the counter is saturated: the reader is already due to wake up.
  if (r < 0 && koffi.errno() !== EAGAIN) throw new SysError('write(eventfd)', koffi.errno(), { fd });
}

const CLOCK_MONOTONIC = 1;
const timerSpec = new BigInt64Array(4);

/** A non-blocking CLOCK_MONOTONIC timerfd; read it with eventfdRead (both hand out an 8-byte count). */
export function timerfd(): number {
  return check('timerfd_create', timerfdCreate_(CLOCK_MONOTONIC, EFD_CLOEXEC | EFD_NONBLOCK) as number);
}

/** Fires every `periodMs` (first after `periodMs`); 0 disarms it. */
export function timerfdSetPeriod(fd: number, periodMs: number): void {
  const sec = BigInt(Math.floor(periodMs / 1000));
  const nsec = BigInt(Math.round((periodMs % 1000) * 1e6));
  timerSpec[0] = sec;
  timerSpec[1] = nsec;
  timerSpec[2] = sec;
  timerSpec[3] = nsec;
  check('timerfd_settime', timerfdSettime_(fd, 0, timerSpec, null) as number, { fd });
}

/** Reads and resets the counter; 0 when nothing was pending (non-blocking eventfd). */
export function eventfdRead(fd: number): number {
  const r = Number(read_(fd, efdBytes, 8));
  if (r < 0) {
    if (koffi.errno() === EAGAIN) return 0;
    throw new SysError('read(eventfd)', koffi.errno(), { fd });
  }
  return Number(efdScratch[0]);
}

export function setNonBlocking(fd: number, on: boolean): void {
  const fl = fileStatusFlags(fd);
  const next = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
  if (next !== fl) check('fcntl', fcntl_(fd, F_SETFL, next) as number, { fd });
}

/** The file status flags of fd's open file description (fcntl F_GETFL). */
export function fileStatusFlags(fd: number): number {
  return check('fcntl', fcntl_(fd, F_GETFL, 0) as number, { fd });
}

export function fcntl(fd: number, cmd: number, arg: number): number {
  return check('fcntl', fcntl_(fd, cmd, arg) as number, { fd, cmd });
}

export function openFile(path: string, flags: number, mode = 0o644): number {
  return check('open', open_(path, flags | O_CLOEXEC, mode) as number, { path });
}

/**
 * A new open file description of what fd is open on, with its access mode and O_DIRECT (not a dup, which shares
 * the description: its offset, its flags, and the write-back errors it has been told of).
 */
export function reopenDescription(fd: number): number {
  const fl = fileStatusFlags(fd);
  return openFile(`/proc/self/fd/${fd}`, fl & (O_ACCMODE | O_DIRECT));
}

export function pipe2(flags = O_CLOEXEC): [number, number] {
  const fds = new Int32Array(2);
  check('pipe2', pipe2_(fds, flags) as number);
  return [fds[0], fds[1]];
}

export function dup(fd: number): number {
  return check('dup', dup_(fd) as number, { fd });
}

/** A second fd (close-on-exec) for the open file `fd` names, or -errno (no exception). */
export function dupCloexecRaw(fd: number): number {
  const r = fcntl_(fd, F_DUPFD_CLOEXEC, 0) as number;
  return r < 0 ? -koffi.errno() : r;
}
