import { libc, koffi } from './libc.js';
import { int64, type FileOffset } from './fd.js';
import { ck, P } from './fs-path.js';

/** A file's data: size and space (ftruncate, fallocate), offsets (lseek), copy_file_range, and syncing it. */

const SYS_copy_file_range = 326;

const ftruncate_ = libc.func('ftruncate', 'int', ['int', 'int64']);
const fallocate_ = libc.func('fallocate', 'int', ['int', 'int', 'int64', 'int64']);
const lseek_ = libc.func('lseek', 'int64', ['int', 'int64', 'int']);
const fsync_ = libc.func('fsync', 'int', ['int']);
const fdatasync_ = libc.func('fdatasync', 'int', ['int']);
const syncfs_ = libc.func('syncfs', 'int', ['int']);

export function ftruncate(fd: number, size: FileOffset): void {
  ck('ftruncate', ftruncate_(fd, int64(size)), { fd, size: String(size) });
}

export function fallocate(fd: number, mode: number, offset: FileOffset, len: FileOffset): void {
  ck('fallocate', fallocate_(fd, mode, int64(offset), int64(len)), { fd });
}

/** fallocate; 0 or -errno (no exception). */
export function fallocateRaw(fd: number, mode: number, offset: number, len: number): number {
  return Number(fallocate_(fd, mode, offset, len)) < 0 ? -koffi.errno() : 0;
}

export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;

/** lseek with 64-bit offsets both ways (SEEK_END of an ext4 directory is 2^63 - 1); the new offset. */
/** Directory offsets are opaque 64-bit cookies (hashes on ext4) and go through here as well. */
export function lseek(fd: number, offset: bigint, whence: number): bigint {
  const r = BigInt(lseek_(fd, int64(offset), whence) as number | bigint);
  if (r < 0n) ck('lseek', -1, { fd });
  return r;
}


const offIn = new BigInt64Array(1);
const offOut = new BigInt64Array(1);
export function copyFileRange(fdIn: number, inOff: FileOffset, fdOut: number, outOff: FileOffset, len: number, flags: number): number {
  offIn[0] = BigInt(inOff);
  offOut[0] = BigInt(outOff);
  const fn = copyFn;
  return ck('copy_file_range', fn(SYS_copy_file_range, fdIn, offIn, fdOut, offOut, len, flags));
}
const copyFn = libc.func('syscall', 'long', ['long', 'int', P, 'int', P, 'size_t', 'uint']);

export function fsync(fd: number): void {
  ck('fsync', fsync_(fd), { fd });
}
export function fdatasync(fd: number): void {
  ck('fdatasync', fdatasync_(fd), { fd });
}
/** fdatasync, or fsync with `full`; 0 or -errno (no exception). */
export function syncRaw(fd: number, full = false): number {
  const r = Number(full ? fsync_(fd) : fdatasync_(fd));
  return r < 0 ? -koffi.errno() : 0;
}
export function syncfs(fd: number): void {
  ck('syncfs', syncfs_(fd), { fd });
}
