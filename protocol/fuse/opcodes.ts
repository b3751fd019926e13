/** FUSE opcodes (linux/fuse.h). */
export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, FLUSH: 25,
  INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31, SETLK: 32, SETLKW: 33,
  ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38, IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41,
  BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48, REMOVEMAPPING: 49, SYNCFS: 50, TMPFILE: 51,
} as const;
export type OpName = keyof typeof Op;

const opNames = new Map<number, OpName>(Object.entries(Op).map(([k, v]) => [v, k as OpName]));
export function opName(op: number): string {
  return opNames.get(op) ?? `OP_${op}`;
}

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** Oldest minor we speak (struct layouts below assume >= 7.27, like virtiofsd). */
export const FUSE_MIN_MINOR_VERSION = 27;
export const FUSE_ROOT_ID = 1;

/** INIT flags (low 32 bits in `flags`, high 32 bits in `flags2` when INIT_EXT). */
export const Init = {
  ASYNC_READ: 1n << 0n, POSIX_LOCKS: 1n << 1n, FILE_OPS: 1n << 2n, ATOMIC_O_TRUNC: 1n << 3n,
  EXPORT_SUPPORT: 1n << 4n, BIG_WRITES: 1n << 5n, DONT_MASK: 1n << 6n, SPLICE_WRITE: 1n << 7n,
  SPLICE_MOVE: 1n << 8n, SPLICE_READ: 1n << 9n, FLOCK_LOCKS: 1n << 10n, HAS_IOCTL_DIR: 1n << 11n,
  AUTO_INVAL_DATA: 1n << 12n, DO_READDIRPLUS: 1n << 13n, READDIRPLUS_AUTO: 1n << 14n, ASYNC_DIO: 1n << 15n,
  WRITEBACK_CACHE: 1n << 16n, NO_OPEN_SUPPORT: 1n << 17n, PARALLEL_DIROPS: 1n << 18n,
  HANDLE_KILLPRIV: 1n << 19n, POSIX_ACL: 1n << 20n, ABORT_ERROR: 1n << 21n, MAX_PAGES: 1n << 22n,
  CACHE_SYMLINKS: 1n << 23n, NO_OPENDIR_SUPPORT: 1n << 24n, EXPLICIT_INVAL_DATA: 1n << 25n,
  MAP_ALIGNMENT: 1n << 26n, SUBMOUNTS: 1n << 27n, HANDLE_KILLPRIV_V2: 1n << 28n, SETXATTR_EXT: 1n << 29n,
  INIT_EXT: 1n << 30n, INIT_RESERVED: 1n << 31n, SECURITY_CTX: 1n << 32n, HAS_INODE_DAX: 1n << 33n,
  CREATE_SUPP_GROUP: 1n << 34n, HAS_EXPIRE_ONLY: 1n << 35n, DIRECT_IO_ALLOW_MMAP: 1n << 36n,
} as const;

/** SETATTR `valid` bits. */
export const Fattr = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5, FH: 1 << 6,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, LOCKOWNER: 1 << 9, CTIME: 1 << 10, KILL_SUIDGID: 1 << 11,
} as const;

/** open_out.open_flags. */
export const Fopen = { DIRECT_IO: 1, KEEP_CACHE: 2, NONSEEKABLE: 4, CACHE_DIR: 8, STREAM: 16 } as const;

export const FUSE_GETATTR_FH = 1;
export const FUSE_RELEASE_FLUSH = 1;
export const FUSE_RELEASE_FLOCK_UNLOCK = 2;
export const FUSE_LK_FLOCK = 1;
/** fuse_write_in.write_flags: the guest's page cache writes back (an mmap, or the writeback cache), at the offset given. */
export const FUSE_WRITE_CACHE = 1;
export const FUSE_WRITE_KILL_SUIDGID = 4;
/** open_in/create_in.open_flags: O_TRUNC by a caller without CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2). */
export const FUSE_OPEN_KILL_SUIDGID = 1;
/** Largest payload a single READ/WRITE may carry that we accept (virtiofsd uses 1 MiB as well). */
export const FUSE_MAX_WRITE = 1 << 20;
