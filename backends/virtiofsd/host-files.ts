import * as fs from '../../protocol/sys/fs.js';
import { close, O_APPEND, O_CLOEXEC, O_DIRECT, O_NOFOLLOW, O_NONBLOCK, O_RDWR, O_TRUNC, O_WRONLY, setNonBlocking } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { E, FsError } from './errors.js';
import type { Inode } from './inodes.js';
import type { FsOptions, Negotiated } from './options.js';
import { GUEST_OPEN_FLAGS, O_ACCMODE, O_NOATIME } from './open-flags.js';

/**
 * Opens the host file behind an inode's O_PATH fd, through its /proc/self/fd link, with the flags a guest's open
 * becomes on the host.
 */
export class HostFiles {
  constructor(
    private readonly opts: FsOptions,
    /** /proc/self/fd, opened before any sandbox hid /proc. */
    readonly procSelfFd: number,
    /** True when this thread has its own cwd (unshare(CLONE_FS)), so fchdir is private to it. */
    readonly threadCwd: boolean,
    private readonly negotiated: Pick<Negotiated, 'writebackNegotiated'>,
  ) {}

  /** The host open flags for a guest's OPEN or CREATE flags. */
  openFlags(flags: number): number {
    let f = flags & GUEST_OPEN_FLAGS;
    if (!this.opts.allowDirectIo) f &= ~O_DIRECT;
    if (!this.opts.preserveNoatime) f &= ~O_NOATIME;
    // The kernel's writeback cache may read back pages of a write-only file.
    if (this.negotiated.writebackNegotiated && (f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
    // O_APPEND alone writes nothing: a read-only open may carry it, as virtiofsd allows.
    if (this.opts.readonly && ((f & O_ACCMODE) !== 0 || f & O_TRUNC)) {
      throw new FsError(E.EROFS, 'read-only share');
    }
    // O_APPEND stays off the host fd (as Rust virtiofsd): a write the guest places, its page cache writing back an
    // mmap or one after it cleared O_APPEND with fcntl, lands where it says; WRITE appends when its flags ask.
    return (f & ~O_APPEND) | O_CLOEXEC;
  }

  /** Opens the inode for I/O through its /proc/self/fd link; only regular files and directories. */
  reopen(i: Inode, flags: number, guestFlags = 0): number {
    if (i.type !== fs.S_IFREG && i.type !== fs.S_IFDIR) throw new FsError(E.EBADF, 'not a regular file or directory');
    return this.openVia(String(i.fd), flags, guestFlags);
  }

  /**
   * Opens `via`, a name in /proc/self/fd, with host flags `fl`. A file the host keeps append-only (chattr +a) opens
   * for writing only with O_APPEND: when the guest asked for it (`guestFlags`), the fd gets it after all.
   */
  openVia(via: string, fl: number, guestFlags: number): number {
    const flags = (fl & ~O_NOFOLLOW) | O_CLOEXEC;
    try {
      return fs.openat(this.procSelfFd, via, flags);
    } catch (e) {
      if (!(e instanceof SysError) || e.errno !== E.EPERM || (guestFlags & O_APPEND) === 0 || (flags & O_APPEND) !== 0) throw e;
      // Not under the writeback cache: the guest's page cache writes pages back where they lie, and an O_APPEND fd
      // would append them again (QEMU's virtiofsd refuses the open too).
      if (this.negotiated.writebackNegotiated) throw e;
      return fs.openat(this.procSelfFd, via, flags | O_APPEND);
    }
  }
}

/**
 * Opens with `fl` through `openWith`; with `leaseAgain` (and no O_NONBLOCK of the guest's) the open is made O_NONBLOCK,
 * so that a host lease it would have to break is EAGAIN at once instead of a wait of up to lease-break-time, and the fd
 * then has O_NONBLOCK cleared.
 */
export function leaseProbe(fl: number, leaseAgain: boolean, openWith: (fl: number) => number): number {
  if (!leaseAgain || (fl & O_NONBLOCK) !== 0) return openWith(fl);
  const fd = openWith(fl | O_NONBLOCK);
  try {
    setNonBlocking(fd, false);
  } catch (e) {
    close(fd);
    throw e;
  }
  return fd;
}
