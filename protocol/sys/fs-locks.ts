import { libc } from './libc.js';
import { ck, P } from './fs-path.js';

/** File locks: POSIX and OFD locks through fcntl, and flock. */

export const F_OFD_GETLK = 36;
export const F_OFD_SETLK = 37;
export const F_OFD_SETLKW = 38;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;

const fcntlPtr_ = libc.func('fcntl', 'int', ['int', 'int', P]);
const flock_ = libc.func('flock', 'int', ['int', 'int']);

export interface Flock { type: number; whence: number; start: bigint; len: bigint; pid: number }
const flockBuf = Buffer.alloc(32);
/** fcntl with a struct flock (F_OFD_* / F_*LK); returns the (possibly updated) lock. */
export function fcntlLock(fd: number, cmd: number, lk: Flock): Flock {
  flockBuf.fill(0);
  flockBuf.writeInt16LE(lk.type, 0);
  flockBuf.writeInt16LE(lk.whence, 2);
  flockBuf.writeBigInt64LE(lk.start, 8);
  flockBuf.writeBigInt64LE(lk.len, 16);
  flockBuf.writeInt32LE(lk.pid, 24);
  ck('fcntl(lock)', fcntlPtr_(fd, cmd, flockBuf), { fd, cmd });
  return {
    type: flockBuf.readInt16LE(0), whence: flockBuf.readInt16LE(2), start: flockBuf.readBigInt64LE(8),
    len: flockBuf.readBigInt64LE(16), pid: flockBuf.readInt32LE(24),
  };
}

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;
/** flock(2): whole-file lock of the open file description behind fd. */
export function flock(fd: number, op: number): void {
  ck('flock', flock_(fd, op) as number, { fd, op });
}
