import { libc, koffi, ioctl, SysError } from './libc.js';
import { AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, ck, cstr, EMPTY, P, type PathArg } from './fs-path.js';

/**
 * File status: stat and statx decoded (Stat) or left raw in rawStat for the hot paths, exact 64-bit values, O_DIRECT
 * alignment, statfs, and the size of a block device.
 */

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFBLK = 0o060000;

const fstatat_ = libc.func('fstatat', 'int', ['int', P, P, 'int']);
const statx_ = libc.func('statx', 'int', ['int', P, 'int', 'uint', P]);
const fstatfs_ = libc.func('fstatfs', 'int', ['int', P]);

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
