import * as fs from '../../protocol/sys/fs.js';
import { close, dup, dupCloexecRaw, fileStatusFlags, O_APPEND, O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, O_TRUNC, preadv, preadvRest, pwritev, RWF_APPEND, type FileOffset, type IoVecList } from '../../protocol/sys/fd.js';
import type { Kstatfs } from '../../protocol/fuse/index.js';
import { killingPrivs } from './credentials.js';
import type { DirReader } from './dir-reader.js';
import { E, FsError } from './errors.js';
import type { GuestFds } from './guest-fds.js';
import { leaseProbe, type HostFiles } from './host-files.js';
import type { Handle, HandleTable, Inode, InodeTable } from './inodes.js';
import type { Locks } from './locks.js';
import { writable, type FsOptions, type Negotiated } from './options.js';
import type { Xattrs } from './xattrs.js';

/** File systems that hold files in memory only: fsync has nothing to wait for. */
const MEMORY_FS = new Set([fs.TMPFS_MAGIC, fs.RAMFS_MAGIC]);
/**
 * Filesystems with no flush file operation (tmpfs, ramfs, ext2/3/4, xfs, btrfs): there a FLUSH has
 * nothing to run, since the daemon holds no POSIX locks (guest locks are OFD locks), so the close of a
 * duplicate descriptor is skipped. Everything else (NFS, FUSE, overlayfs...) still gets it.
 */
const NO_FLUSH_FS = new Set([fs.TMPFS_MAGIC, fs.RAMFS_MAGIC, fs.EXT4_SUPER_MAGIC, 0x5846_5342 /* xfs */, 0x9123_683e /* btrfs */]);

/**
 * File systems whose reads of a regular file fill the request up to the end of the file (local block and memory
 * file systems, and overlayfs over them). Elsewhere (FUSE, network, synthetic file systems) a read may come back
 * short before the end: such files are read on until full (preadvRest) and never through io_uring (Handle.readsShort).
 */
const FULL_READ_FS = new Set([...NO_FLUSH_FS, 0x794c_7630 /* overlayfs */]);

/** Open files and directories the guest holds (handles), and the I/O on them: OPEN to RELEASE. */
export class FileIo {
  constructor(
    private readonly opts: FsOptions,
    private readonly negotiated: Pick<Negotiated, 'writebackNegotiated'>,
    private readonly guestFds: GuestFds,
    private readonly inodes: InodeTable,
    private readonly handles: HandleTable,
    private readonly files: HostFiles,
    private readonly xattrs: Xattrs,
    private readonly locks: Locks,
    private readonly dirs: DirReader,
  ) {}

  /**
   * OPEN; `kill`: an O_TRUNC by a guest caller without CAP_FSETID (see PassthroughFs.setattr). `leaseAgain`: when a
   * host process holds a lease the open must break, throw EAGAIN at once (the caller waits for it elsewhere) rather
   * than block this thread, and every request behind it, for up to lease-break-time (45 s).
   */
  open(i: Inode, flags: number, kill = false, leaseAgain = false): number {
    const fl = this.files.openFlags(flags);
    this.guestFds.need(1);
    const fd = killingPrivs(kill && (fl & O_TRUNC) !== 0, () => leaseProbe(fl, leaseAgain, (f) => this.files.reopen(i, f, flags)));
    if (fl & O_TRUNC) this.xattrs.dropCapabilities(fd);
    return this.fileHandle(fd, i, flags);
  }

  /** A handle for a file opened with the guest's `guestFlags`; it notes a host fd that had to take O_APPEND. */
  fileHandle(fd: number, inode: Inode, guestFlags: number): number {
    const h: Handle = { fd, inode, dir: false };
    if ((guestFlags & O_APPEND) !== 0 && (fileStatusFlags(fd) & O_APPEND) !== 0) h.appendOnly = true;
    if (!FULL_READ_FS.has(this.fsType(inode))) h.readsShort = true;
    return this.handles.add(h);
  }

  opendir(i: Inode): number {
    if (i.type !== fs.S_IFDIR) throw new FsError(E.ENOTDIR, 'not a directory');
    this.guestFds.need(1);
    const fd = fs.openat(i.fd, '.', O_DIRECTORY | O_CLOEXEC);
    return this.handles.add({ fd, inode: i, dir: true });
  }

  /** RELEASE; `flockUnlock` (FUSE_RELEASE_FLOCK_UNLOCK): the guest's last close drops its flock lock. */
  release(fh: number, flockUnlock = false): void {
    const h = this.handles.take(fh);
    this.dirs.released(h);
    // The fd may be shared a little longer (an io_uring READ in flight holds the file): unlock now.
    try {
      if (flockUnlock && this.opts.flock) fs.flock(h.fd, fs.LOCK_UN);
    } finally {
      close(h.fd);
    }
  }

  read(fh: number, offset: FileOffset, iov: IoVecList): number {
    const h = this.handles.get(fh);
    const n = preadv(h.fd, iov, offset);
    if (n < 0) throw new FsError(E.EAGAIN, 'read would block');
    // Elsewhere a short read is the end of the file: asking again would cost every read that reaches it a syscall.
    return h.readsShort === true ? preadvRest(h.fd, iov, offset, n) : n;
  }

  /**
   * WRITE; `kill`: the guest writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID), see PassthroughFs.setattr. `append`: at
   * the end of the file whatever the offset, atomically (the guest's file has O_APPEND, see appends() in fast-path.ts).
   */
  write(fh: number, offset: FileOffset, iov: IoVecList, kill = false, append = false): number {
    writable(this.opts);
    const h = this.handles.get(fh);
    // An append-only file: a WRITE that is not an append (the guest cleared O_APPEND with fcntl, or wrote through a
    // shared mapping, which the host would have refused) would land at the end, not where it says.
    if (h.appendOnly === true && !append) throw new FsError(E.EPERM, 'append-only file');
    const fd = h.fd;
    // With the writeback cache the guest's kernel owns the end of the file (pages it has not written back lie beyond
    // the host's): every write goes where it says, as virtiofsd does.
    const rwf = append && !this.negotiated.writebackNegotiated ? RWF_APPEND : 0;
    const n = killingPrivs(kill, () => pwritev(fd, iov, offset, rwf));
    if (n < 0) throw new FsError(E.EAGAIN, 'write would block');
    if (n > 0) this.xattrs.dropCapabilities(fd);
    return n;
  }

  /**
   * close(2) in the guest: the lock owner's POSIX locks go (the guest kernel does not unlock remote
   * locks itself), and closing a duplicate runs the host filesystem's flush (NFS writes back here).
   */
  flush(fh: number, lockOwner: bigint): void {
    const h = this.handles.get(fh);
    this.locks.dropOwner(h.inode, lockOwner);
    if (this.hasFlush(h)) close(dup(h.fd));
  }

  /** Whether closing a descriptor of h's file runs its filesystem's flush (asked once per device). */
  private hasFlush(h: Handle): boolean {
    return !NO_FLUSH_FS.has(this.fsType(h.inode));
  }

  /** The statfs type of i's file system (one per device, asked once). */
  private fsType(i: Inode): number {
    return this.inodes.fsType(i, statfsType);
  }

  /** A duplicate of handle fh's fd, for a sync that finishes later, or -errno (the caller then syncs inline). The caller closes it. */
  syncFd(fh: number): number {
    return dupCloexecRaw(this.handles.get(fh).fd);
  }

  /** Whether fsync on i's file system returns at once (it keeps files in memory only): not worth another thread. */
  syncsAtOnce(i: Inode): boolean {
    return MEMORY_FS.has(this.fsType(i));
  }

  fsync(fh: number, datasync: boolean): void {
    const fd = this.handles.get(fh).fd;
    if (datasync) fs.fdatasync(fd);
    else fs.fsync(fd);
  }

  fallocate(fh: number, mode: number, offset: FileOffset, length: FileOffset): void {
    writable(this.opts);
    fs.fallocate(this.handles.get(fh).fd, mode, offset, length);
  }

  lseek(fh: number, offset: bigint, whence: number): bigint {
    return fs.lseek(this.handles.get(fh).fd, offset, whence);
  }

  copyFileRange(fhIn: number, offIn: FileOffset, fhOut: number, offOut: FileOffset, len: number, flags: number): number {
    writable(this.opts);
    if (flags !== 0) throw new FsError(E.EINVAL, 'copy_file_range flags');
    return fs.copyFileRange(this.handles.get(fhIn).fd, offIn, this.handles.get(fhOut).fd, offOut, len, 0);
  }

  statfs(i: Inode): Kstatfs {
    const s = fs.fstatfs(i.fd);
    return { blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, bsize: s.bsize, namelen: s.namelen, frsize: s.frsize };
  }

  /** SYNCFS of the file system that holds i (the guest names the root of one of its superblocks: a submount's too). */
  syncfs(i: Inode): void {
    if (i.type !== fs.S_IFDIR && i.type !== fs.S_IFREG) throw new FsError(E.EINVAL, 'syncfs of a special file');
    // syncfs(2) takes no O_PATH fd: a directory is opened through '.', a file reopened read-only.
    const fd = i.type === fs.S_IFDIR ? fs.openat(i.fd, '.', O_DIRECTORY | O_CLOEXEC) : this.files.reopen(i, O_NONBLOCK);
    try {
      fs.syncfs(fd);
    } finally {
      close(fd);
    }
  }
}

/** statfs f_type of an inode's file system (InodeTable.fsType caches it; a module function: no closure per FLUSH). */
function statfsType(i: Inode): number {
  return fs.fstatfs(i.fd).type;
}
