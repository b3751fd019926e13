import { libc, koffi, check, ioctl, rawSyscall, SysError } from './libc.js';
import { int64, type FileOffset } from './fd.js';

/**
 * Filesystem system calls for the virtio-fs backend: *at calls, openat2, xattrs, locks, per-thread
 * credentials and the sandbox calls. Path arguments accept a string or raw bytes (guest names need
 * not be UTF-8); all calls throw SysError on failure unless named `try*`.
 */

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;
export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
export const RESOLVE_IN_ROOT = 0x10;
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFBLK = 0o060000;
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;
export const F_OFD_GETLK = 36;
export const F_OFD_SETLK = 37;
export const F_OFD_SETLKW = 38;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
export const RLIMIT_NOFILE = 7;
export const CLONE_FS = 0x200;
export const CLONE_NEWNS = 0x20000;
export const CLONE_NEWPID = 0x20000000;
export const CLONE_NEWNET = 0x40000000;
export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 1 << 18;
export const MS_SLAVE = 1 << 19;
export const MNT_DETACH = 2;

const SYS_setresuid = 117;
const SYS_setresgid = 119;
const SYS_setgroups = 116;
const SYS_getgroups = 115;
const SYS_pivot_root = 155;
const SYS_renameat2 = 316;
const SYS_copy_file_range = 326;
const SYS_openat2 = 437;
const SYS_name_to_handle_at = 303;
const SYS_open_by_handle_at = 304;

const P = 'void *';
const openat_ = libc.func('openat', 'int', ['int', P, 'int', 'uint']);
const fstatat_ = libc.func('fstatat', 'int', ['int', P, P, 'int']);
const statx_ = libc.func('statx', 'int', ['int', P, 'int', 'uint', P]);
const readlinkat_ = libc.func('readlinkat', 'long', ['int', P, P, 'size_t']);
const mkdirat_ = libc.func('mkdirat', 'int', ['int', P, 'uint']);
const mknodat_ = libc.func('mknodat', 'int', ['int', P, 'uint', 'uint64']);
const symlinkat_ = libc.func('symlinkat', 'int', [P, 'int', P]);
const linkat_ = libc.func('linkat', 'int', ['int', P, 'int', P, 'int']);
const unlinkat_ = libc.func('unlinkat', 'int', ['int', P, 'int']);
const fchmodat_ = libc.func('fchmodat', 'int', ['int', P, 'uint', 'int']);
const fchmod_ = libc.func('fchmod', 'int', ['int', 'uint']);
const fchownat_ = libc.func('fchownat', 'int', ['int', P, 'uint', 'uint', 'int']);
const utimensat_ = libc.func('utimensat', 'int', ['int', P, P, 'int']);
const ftruncate_ = libc.func('ftruncate', 'int', ['int', 'int64']);
const fallocate_ = libc.func('fallocate', 'int', ['int', 'int', 'int64', 'int64']);
const lseek_ = libc.func('lseek', 'int64', ['int', 'int64', 'int']);
const fsync_ = libc.func('fsync', 'int', ['int']);
const fdatasync_ = libc.func('fdatasync', 'int', ['int']);
const syncfs_ = libc.func('syncfs', 'int', ['int']);
const fstatfs_ = libc.func('fstatfs', 'int', ['int', P]);
const getdents64_ = libc.func('getdents64', 'long', ['int', P, 'size_t']);
const fcntlPtr_ = libc.func('fcntl', 'int', ['int', 'int', P]);
const flock_ = libc.func('flock', 'int', ['int', 'int']);
const fgetxattr_ = libc.func('fgetxattr', 'long', ['int', P, P, 'size_t']);
const fsetxattr_ = libc.func('fsetxattr', 'int', ['int', P, P, 'size_t', 'int']);
const flistxattr_ = libc.func('flistxattr', 'long', ['int', P, 'size_t']);
const fremovexattr_ = libc.func('fremovexattr', 'int', ['int', P]);
const getxattr_ = libc.func('getxattr', 'long', [P, P, P, 'size_t']);
const setxattr_ = libc.func('setxattr', 'int', [P, P, P, 'size_t', 'int']);
const listxattr_ = libc.func('listxattr', 'long', [P, P, 'size_t']);
const removexattr_ = libc.func('removexattr', 'int', [P, P]);
const fchdir_ = libc.func('fchdir', 'int', ['int']);
const faccessat_ = libc.func('faccessat', 'int', ['int', P, 'int', 'int']);
const chdir_ = libc.func('chdir', 'int', [P]);
const chroot_ = libc.func('chroot', 'int', [P]);
const unshare_ = libc.func('unshare', 'int', ['int']);
const mount_ = libc.func('mount', 'int', [P, P, P, 'ulong', P]);
const umount2_ = libc.func('umount2', 'int', [P, 'int']);
const umask_ = libc.func('umask', 'uint', ['uint']);
const getrlimit_ = libc.func('getrlimit', 'int', ['int', P]);
const setrlimit_ = libc.func('setrlimit', 'int', ['int', P]);
const syscallPtr_ = libc.func('syscall', 'long', ['long', 'long', P, P, 'long', 'long']);

export type PathArg = string | Uint8Array;

/** A NUL-terminated copy of a path (strings are UTF-8 encoded). */
export function cstr(p: PathArg): Buffer {
  if (typeof p === 'string') return Buffer.from(p + '\0', 'utf8');
  const b = Buffer.allocUnsafe(p.length + 1);
  b.set(p, 0);
  b[p.length] = 0;
  return b;
}
const EMPTY = cstr('');

function ck(call: string, ret: number | bigint, ctx?: Record<string, unknown>): number {
  return check(call, Number(ret), ctx);
}

export function openat(dirfd: number, path: PathArg, flags: number, mode = 0): number {
  return ck('openat', openat_(dirfd, cstr(path), flags, mode));
}

const howBuf = Buffer.alloc(24);
/** openat2(2): resolve is a RESOLVE_* mask; O_CLOEXEC is always added. */
export function openat2(dirfd: number, path: PathArg, flags: number, mode: number, resolve: number): number {
  return ck('openat2', openat2Raw(dirfd, cstr(path), flags, mode, resolve), { dirfd });
}

/**
 * openat2 for hot paths: `cpath` must already be NUL-terminated (a guest name is, inside its request);
 * returns the fd, or -errno instead of throwing (a failed LOOKUP is routine, not exceptional).
 */
export function openat2Raw(dirfd: number, cpath: Uint8Array, flags: number, mode: number, resolve: number): number {
  howBuf.writeUInt32LE((flags | 0o2000000) >>> 0, 0);
  howBuf.writeUInt32LE(0, 4);
  howBuf.writeUInt32LE(mode >>> 0, 8);
  howBuf.writeUInt32LE(0, 12);
  howBuf.writeUInt32LE(resolve >>> 0, 16);
  howBuf.writeUInt32LE(0, 20);
  const r = Number(syscallPtr_(SYS_openat2, dirfd, cpath, howBuf, 24, 0));
  return r < 0 ? -koffi.errno() : r;
}

/** Decoded struct stat (x86_64 layout). */
export interface Stat {
  dev: bigint;
  ino: number | bigint;
  nlink: number;
  mode: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number | bigint;
  blksize: number;
  blocks: number;
  /** Seconds: exact (i64Exact), as a guest may set any 64-bit time. */
  atime: number | bigint;
  atimeNsec: number;
  mtime: number | bigint;
  mtimeNsec: number;
  ctime: number | bigint;
  ctimeNsec: number;
}
const statBuf = Buffer.alloc(144);

/** A u64 of `b` at `off` exactly: a number below 2^53, a bigint above (overlayfs xino inode numbers sit near 2^63). */
export function u64Exact(b: Buffer, off: number): number | bigint {
  const hi = b.readUInt32LE(off + 4);
  return hi < 0x20_0000 ? hi * 0x1_0000_0000 + b.readUInt32LE(off) : b.readBigUInt64LE(off);
}

/** An i64 of `b` at `off` exactly: a number within +-2^53, a bigint beyond. */
export function i64Exact(b: Buffer, off: number): number | bigint {
  const hi = b.readInt32LE(off + 4);
  return hi < 0x20_0000 && hi >= -0x20_0000 ? hi * 0x1_0000_0000 + b.readUInt32LE(off) : b.readBigInt64LE(off);
}

export function decodeStat(b: Buffer): Stat {
  return {
    dev: b.readBigUInt64LE(0),
    ino: u64Exact(b, 8),
    nlink: Number(b.readBigUInt64LE(16)),
    mode: b.readUInt32LE(24),
    uid: b.readUInt32LE(28),
    gid: b.readUInt32LE(32),
    rdev: Number(b.readBigUInt64LE(40)),
    size: u64Exact(b, 48), // off_t: never negative for a file
    blksize: Number(b.readBigInt64LE(56)),
    blocks: Number(b.readBigInt64LE(64)),
    atime: i64Exact(b, 72),
    atimeNsec: Number(b.readBigInt64LE(80)),
    mtime: i64Exact(b, 88),
    mtimeNsec: Number(b.readBigInt64LE(96)),
    ctime: i64Exact(b, 104),
    ctimeNsec: Number(b.readBigInt64LE(112)),
  };
}

export function fstatat(dirfd: number, path: PathArg, flags: number): Stat {
  ck('fstatat', fstatat_(dirfd, path === '' ? EMPTY : cstr(path), statBuf, flags));
  return decodeStat(statBuf);
}

/** The raw struct stat (x86_64 layout) filled by fstatRaw; valid until the next stat call on this thread. */
export const rawStat: Buffer = statBuf;

/** fstat into rawStat without decoding: 0, or -errno. */
export function fstatRaw(fd: number): number {
  return (fstatat_(fd, EMPTY, statBuf, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) as number) < 0 ? -koffi.errno() : 0;
}

const BLKGETSIZE64 = 0x80081272;
const BLKDISCARD = 0x1277;

/** BLKDISCARD of [off, off+len) on a block device (synchronous): 0 or -errno. */
export function blkDiscard(fd: number, off: number, len: number): number {
  try {
    ioctl(fd, BLKDISCARD, new BigUint64Array([BigInt(off), BigInt(len)]));
    return 0;
  } catch (e) {
    if (e instanceof SysError) return -e.errno;
    throw e;
  }
}

/** A block device's size in bytes (BLKGETSIZE64), exact as u64Exact gives it: fstat reports 0 for it. */
export function blockDeviceSize(fd: number): number | bigint {
  const b = Buffer.alloc(8);
  ioctl(fd, BLKGETSIZE64, b);
  return u64Exact(b, 0);
}

/** lstat of `cname` (NUL-terminated) under dirfd into rawStat without decoding: 0, or -errno. */
export function fstatatRaw(dirfd: number, cname: Uint8Array): number {
  return (fstatat_(dirfd, cname, statBuf, AT_SYMLINK_NOFOLLOW) as number) < 0 ? -koffi.errno() : 0;
}

const STATX_BASIC_STATS = 0x7ff;
const STATX_MNT_ID = 0x1000;
const statxBuf = Buffer.alloc(256);
/** u32 views of struct statx and of the struct stat in rawStat (both buffers own their 8-aligned memory). */
const sx = new Uint32Array(statxBuf.buffer, statxBuf.byteOffset, 64);
const so = new Uint32Array(statBuf.buffer, statBuf.byteOffset, 36);
let lastMountId = 0;

/** The kernel's struct stat encoding of a device number (new_encode_dev: 12-bit major, 20-bit minor). */
function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * statx of `cname` (NUL-terminated) under dirfd, no symlink followed (AT_EMPTY_PATH in `flags` and an empty name: the
 * fd itself), left in rawStat in struct stat layout, plus the mount ID (rawMountId()). 0, or -errno.
 */
export function statxRaw(dirfd: number, cname: Uint8Array, flags = 0): number {
  if ((statx_(dirfd, cname, flags | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_MNT_ID, statxBuf) as number) < 0) return -koffi.errno();
  so[0] = encodeDev(sx[34], sx[35]); // dev
  so[1] = 0;
  so[2] = sx[8]; // ino
  so[3] = sx[9];
  so[4] = sx[4]; // nlink
  so[5] = 0;
  so[6] = sx[7] & 0xffff; // mode
  so[7] = sx[5]; // uid
  so[8] = sx[6]; // gid
  so[10] = encodeDev(sx[32], sx[33]); // rdev
  so[11] = 0;
  so[12] = sx[10]; // size
  so[13] = sx[11];
  so[14] = sx[1]; // blksize
  so[15] = 0;
  so[16] = sx[12]; // blocks
  so[17] = sx[13];
  so[18] = sx[16]; // atime
  so[19] = sx[17];
  so[20] = sx[18];
  so[21] = 0;
  so[22] = sx[28]; // mtime
  so[23] = sx[29];
  so[24] = sx[30];
  so[25] = 0;
  so[26] = sx[24]; // ctime
  so[27] = sx[25];
  so[28] = sx[26];
  so[29] = 0;
  lastMountId = (sx[0] & STATX_MNT_ID) !== 0 ? sx[37] * 0x1_0000_0000 + sx[36] : 0;
  return 0;
}

const STATX_DIOALIGN = 0x2000;

/**
 * O_DIRECT's alignment for the file behind fd as the kernel states it (statx STATX_DIOALIGN, Linux 6.1+; block
 * devices 6.11+): the alignment of offsets and lengths, and of memory. null where it does not say (older kernels,
 * file systems that do not report it); 0 offset alignment means O_DIRECT is not supported on the file.
 */
export function directIoAlignment(fd: number): { offset: number; memory: number } | null {
  const b = Buffer.alloc(256);
  if ((statx_(fd, EMPTY, AT_EMPTY_PATH, STATX_DIOALIGN, b) as number) < 0) return null;
  if ((b.readUInt32LE(0) & STATX_DIOALIGN) === 0) return null;
  return { memory: b.readUInt32LE(0x98), offset: b.readUInt32LE(0x9c) };
}

/** The mount ID of the last statxRaw (0 on kernels before 5.8, which do not report it). */
export function rawMountId(): number {
  return lastMountId;
}

/** fstat of an fd (O_PATH too) with the ID of the mount it was reached through. */
export function fstatx(fd: number): Stat & { mountId: number } {
  const r = statxRaw(fd, EMPTY, AT_EMPTY_PATH);
  if (r < 0) throw new SysError('statx', -r, { fd });
  return { ...decodeStat(statBuf), mountId: lastMountId };
}

/** fstat of an fd, including O_PATH fds. */
export function fstat(fd: number): Stat {
  ck('fstat', fstatat_(fd, EMPTY, statBuf, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), { fd });
  return decodeStat(statBuf);
}

export function readlinkat(dirfd: number, path: PathArg, buf: Uint8Array): number {
  return ck('readlinkat', readlinkat_(dirfd, path === '' ? EMPTY : cstr(path), buf, buf.length));
}

export function mkdirat(dirfd: number, name: PathArg, mode: number): void {
  ck('mkdirat', mkdirat_(dirfd, cstr(name), mode));
}

export function mknodat(dirfd: number, name: PathArg, mode: number, dev: number): void {
  ck('mknodat', mknodat_(dirfd, cstr(name), mode, dev));
}

export function symlinkat(target: PathArg, dirfd: number, name: PathArg): void {
  ck('symlinkat', symlinkat_(cstr(target), dirfd, cstr(name)));
}

export function linkat(olddirfd: number, oldpath: PathArg, newdirfd: number, newpath: PathArg, flags: number): void {
  ck('linkat', linkat_(olddirfd, oldpath === '' ? EMPTY : cstr(oldpath), newdirfd, cstr(newpath), flags));
}

export function unlinkat(dirfd: number, name: PathArg, flags: number): void {
  ck('unlinkat', unlinkat_(dirfd, cstr(name), flags));
}

export function renameat2(olddirfd: number, oldname: PathArg, newdirfd: number, newname: PathArg, flags: number): void {
  ck('renameat2', rawSyscallPaths(SYS_renameat2, olddirfd, cstr(oldname), newdirfd, cstr(newname), flags));
}

const renameFn = libc.func('syscall', 'long', ['long', 'int', P, 'int', P, 'uint']);
function rawSyscallPaths(nr: number, a: number, p1: Buffer, b: number, p2: Buffer, flags: number): number {
  return Number(renameFn(nr, a, p1, b, p2, flags));
}

export function fchmodat(dirfd: number, path: PathArg, mode: number, flags = 0): void {
  ck('fchmodat', fchmodat_(dirfd, cstr(path), mode, flags));
}

export function fchmod(fd: number, mode: number): void {
  ck('fchmod', fchmod_(fd, mode), { fd });
}

/** uid/gid of 0xffffffff leave that id unchanged. */
export function fchownat(dirfd: number, path: PathArg, uid: number, gid: number, flags: number): void {
  ck('fchownat', fchownat_(dirfd, path === '' ? EMPTY : cstr(path), uid >>> 0, gid >>> 0, flags));
}

const tsBuf = Buffer.alloc(32);
/** times: [atimeSec, atimeNsec, mtimeSec, mtimeNsec]; nsec may be UTIME_NOW / UTIME_OMIT. */
/** `times`: atime sec, nsec, mtime sec, nsec; a bigint second is taken as the 64-bit two's complement value it holds. */
export function utimensat(dirfd: number, path: PathArg, times: [number | bigint, number, number | bigint, number], flags: number): void {
  for (let i = 0; i < 4; i++) {
    const t = times[i];
    tsBuf.writeBigInt64LE(typeof t === 'bigint' ? BigInt.asIntN(64, t) : BigInt(Math.trunc(t)), i * 8);
  }
  ck('utimensat', utimensat_(dirfd, path === '' ? EMPTY : cstr(path), tsBuf, flags));
}

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

export interface StatFs {
  /** f_type: the filesystem's magic number (TMPFS_MAGIC ...). */
  type: number;
  bsize: number; namelen: number; frsize: number;
  /** Counts exactly (u64Exact): some file systems report an unlimited count as 2^64-1 (hugetlbfs f_files). */
  blocks: number | bigint; bfree: number | bigint; bavail: number | bigint; files: number | bigint; ffree: number | bigint;
}
const statfsBuf = Buffer.alloc(120);
export const TMPFS_MAGIC = 0x01021994;
export const RAMFS_MAGIC = 0x858458f6;
export const EXT4_SUPER_MAGIC = 0xef53;

export function fstatfs(fd: number): StatFs {
  ck('fstatfs', fstatfs_(fd, statfsBuf), { fd });
  const n = (o: number): number => Number(statfsBuf.readBigUInt64LE(o));
  const x = (o: number): number | bigint => u64Exact(statfsBuf, o);
  return { type: n(0), bsize: n(8), blocks: x(16), bfree: x(24), bavail: x(32), files: x(40), ffree: x(48), namelen: n(64), frsize: n(72) };
}

/** Raw linux_dirent64 records into buf; 0 at end of directory. */
export function getdents64(fd: number, buf: Uint8Array): number {
  return ck('getdents64', getdents64_(fd, buf, buf.length), { fd });
}

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

/** With buf null or empty, returns the attribute size. */
export function fgetxattr(fd: number, name: PathArg, buf: Uint8Array | null): number {
  return ck('fgetxattr', fgetxattr_(fd, cstr(name), buf, buf ? buf.length : 0));
}
export function fsetxattr(fd: number, name: PathArg, value: Uint8Array, flags: number): void {
  ck('fsetxattr', fsetxattr_(fd, cstr(name), value, value.length, flags));
}
export function flistxattr(fd: number, buf: Uint8Array | null): number {
  return ck('flistxattr', flistxattr_(fd, buf, buf ? buf.length : 0));
}
export function fremovexattr(fd: number, name: PathArg): void {
  ck('fremovexattr', fremovexattr_(fd, cstr(name)));
}
/** Path forms (follow the last component): used with "N" relative to a cwd of /proc/self/fd. */
export function getxattr(path: PathArg, name: PathArg, buf: Uint8Array | null): number {
  return ck('getxattr', getxattr_(cstr(path), cstr(name), buf, buf ? buf.length : 0));
}
export function setxattr(path: PathArg, name: PathArg, value: Uint8Array, flags: number): void {
  ck('setxattr', setxattr_(cstr(path), cstr(name), value, value.length, flags));
}
export function listxattr(path: PathArg, buf: Uint8Array | null): number {
  return ck('listxattr', listxattr_(cstr(path), buf, buf ? buf.length : 0));
}
export function removexattr(path: PathArg, name: PathArg): void {
  ck('removexattr', removexattr_(cstr(path), cstr(name)));
}

/** Per-thread credential switch: the raw syscall, because glibc's wrapper changes every thread. -1 keeps a value. */
export function setresuidThread(ruid: number, euid: number, suid: number): void {
  ck('setresuid', rawSyscall(SYS_setresuid, ruid, euid, suid));
}
export function setresgidThread(rgid: number, egid: number, sgid: number): void {
  ck('setresgid', rawSyscall(SYS_setresgid, rgid, egid, sgid));
}
/** Per-thread supplementary groups (raw syscall). */
export function setgroupsThread(groups: number[]): void {
  const b = new Uint32Array(groups);
  ck('setgroups', Number(groupsFn(SYS_setgroups, groups.length, b)));
}
/** syscall(SYS_setgroups or SYS_getgroups, count, list). */
const groupsFn = libc.func('syscall', 'long', ['long', 'size_t', P]);
/** The calling thread's supplementary groups (raw getgroups). */
export function getgroupsThread(): number[] {
  const n = ck('getgroups', Number(groupsFn(SYS_getgroups, 0, null)));
  const b = new Uint32Array(Math.max(1, n));
  const got = ck('getgroups', Number(groupsFn(SYS_getgroups, b.length, b)));
  return [...b.subarray(0, got)];
}

export interface FileHandle { handleType: number; bytes: Uint8Array; mountId: number }
const handleFn = libc.func('syscall', 'long', ['long', 'int', P, P, P, 'int']);
const openHandleFn = libc.func('syscall', 'long', ['long', 'int', P, 'int']);
/** name_to_handle_at(fd, "", AT_EMPTY_PATH): a persistent handle for an inode. */
export function nameToHandleAt(dirfd: number, path: PathArg, flags: number): FileHandle {
  const fh = Buffer.alloc(8 + 128);
  fh.writeUInt32LE(128, 0);
  const mnt = new Int32Array(1);
  ck('name_to_handle_at', handleFn(SYS_name_to_handle_at, dirfd, path === '' ? EMPTY : cstr(path), fh, mnt, flags));
  const n = fh.readUInt32LE(0);
  return { handleType: fh.readInt32LE(4), bytes: fh.subarray(8, 8 + n), mountId: mnt[0] };
}
export function openByHandleAt(mountFd: number, h: FileHandle, flags: number): number {
  const fh = Buffer.alloc(8 + h.bytes.length);
  fh.writeUInt32LE(h.bytes.length, 0);
  fh.writeInt32LE(h.handleType, 4);
  fh.set(h.bytes, 8);
  return ck('open_by_handle_at', openHandleFn(SYS_open_by_handle_at, mountFd, fh, flags | 0o2000000));
}

export const AT_EACCESS = 0x200;
export function faccessat(dirfd: number, path: PathArg, mode: number, flags: number): void {
  ck('faccessat', faccessat_(dirfd, cstr(path), mode, flags));
}

export function fchdir(fd: number): void {
  ck('fchdir', fchdir_(fd), { fd });
}
export function chdir(path: PathArg): void {
  ck('chdir', chdir_(cstr(path)));
}
export function chroot(path: PathArg): void {
  ck('chroot', chroot_(cstr(path)));
}
/** unshare(2) for the calling thread (CLONE_FS / CLONE_NEWNS affect only this thread in a threaded process). */
export function unshare(flags: number): void {
  ck('unshare', unshare_(flags), { flags: `0x${flags.toString(16)}` });
}
export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null = null): void {
  ck('mount', mount_(source === null ? null : cstr(source), cstr(target), fstype === null ? null : cstr(fstype), flags,
    data === null ? null : cstr(data)), { source, target, fstype });
}
export function umount2(target: string, flags: number): void {
  ck('umount2', umount2_(cstr(target), flags), { target });
}
const pivotFn = libc.func('syscall', 'long', ['long', P, P]);
export function pivotRoot(newRoot: string, putOld: string): void {
  ck('pivot_root', pivotFn(SYS_pivot_root, cstr(newRoot), cstr(putOld)), { newRoot, putOld });
}
/** Sets the calling thread's umask (per thread after unshare(CLONE_FS)); returns the old one. */
export function umask(mask: number): number {
  return umask_(mask) as number;
}

export interface Rlimit { cur: bigint; max: bigint }
export function getrlimit(resource: number): Rlimit {
  const b = new BigUint64Array(2);
  ck('getrlimit', getrlimit_(resource, b));
  return { cur: b[0], max: b[1] };
}
export function setrlimit(resource: number, lim: Rlimit): void {
  ck('setrlimit', setrlimit_(resource, new BigUint64Array([lim.cur, lim.max])));
}

export { SysError, koffi };
