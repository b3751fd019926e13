import * as fs from '../../protocol/sys/fs.js';
import { close, closeQuiet, O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, O_PATH, O_WRONLY, type FileOffset, type IoVecList } from '../../protocol/sys/fd.js';
import { Fattr, type Attr, type EntryOut, type Kstatfs, type FileLock, type SetattrIn, type SecurityContext } from '../../protocol/fuse/index.js';
import { Credentials, killingPrivs, type Caller } from './credentials.js';
import { DirChanges } from './dir-changes.js';
import { DirReader } from './dir-reader.js';
import { Entries } from './entries.js';
import { FileIo } from './file-io.js';
import { GuestFds } from './guest-fds.js';
import { HostFiles } from './host-files.js';
import { idMaps } from './idmap.js';
import { InodeHandles } from './inode-handles.js';
import { HandleTable, Inode, InodeTable, type Handle } from './inodes.js';
import type { LockWant } from './lock-deadlock.js';
import { Locks } from './locks.js';
import { cacheTimeout, writable, type FsOptions, type Negotiated } from './options.js';
import { Xattrs } from './xattrs.js';

/**
 * The passthrough filesystem: runs decoded FUSE operations against the shared directory. Every
 * inode is an O_PATH fd; names are resolved one component at a time below the parent's fd with
 * openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so nothing outside the shared directory is reachable.
 *
 * It holds the inode and handle tables and what INIT agreed; the operations run in the parts it is made of:
 * lookups and entry replies (entries.ts), creation, removal and renaming (dir-changes.ts), open files and their
 * I/O (file-io.ts), READDIR (dir-reader.ts), xattrs (xattrs.ts), locks (locks.ts), the caller's IDs
 * (credentials.ts) and the host opens behind them (host-files.ts).
 */
export class PassthroughFs implements Negotiated {
  /** The fds the guest makes this filesystem hold, against --rlimit-nofile less what the daemon keeps for itself. */
  readonly guestFds: GuestFds;
  readonly inodes: InodeTable;
  readonly handles: HandleTable;
  private readonly procSelfFd: number;
  readonly root: Inode;
  /** Entry and attribute validity handed to the guest: whole seconds and the nanoseconds beyond them. */
  readonly timeout: number;
  readonly timeoutNsec: number;
  private readonly linkBuf = Buffer.alloc(4096);
  /** FUSE_SUBMOUNTS negotiated at INIT (set by the server): only then are mount points flagged. */
  submountsNegotiated = false;
  /** Set by INIT: the guest's page cache writes back (FUSE_WRITEBACK_CACHE agreed, not merely offered by --writeback). */
  writebackNegotiated = false;
  /**
   * Set by INIT: POSIX ACLs agreed (--posix-acl and the guest's FUSE_POSIX_ACL). Without them the guest neither
   * enforces nor sees ACLs, so their xattrs are refused and hidden, as in virtiofsd: a host default ACL would still
   * set the modes of new files, and with --translate-uid the raw host IDs inside an ACL would bypass the mapping.
   */
  aclsNegotiated = false;
  /**
   * Set by INIT: the guest sends the supplementary group a creation relies on (FUSE_CREATE_SUPP_GROUP, Linux 6.3+).
   * An older guest cannot: its kernel checked the caller's groups on the parent already, so a new entry is made
   * with CAP_DAC_OVERRIDE (still owned by the caller), as virtiofsd does; otherwise a member of a directory's group
   * could not create there.
   */
  suppGroupsNegotiated = false;
  /** File-handle identity and the inode fd cache (--inode-file-handles), or null for plain fds. */
  readonly fileHandles: InodeHandles | null;
  private readonly files: HostFiles;
  private readonly xattrs: Xattrs;
  private readonly creds: Credentials;
  private readonly entries: Entries;
  private readonly locks: Locks;
  private readonly dirs: DirReader;
  private readonly io: FileIo;
  private readonly changes: DirChanges;

  constructor(
    readonly opts: FsOptions,
    /** fds opened before a sandbox hid their paths (see sandbox.ts); ownership passes here. */
    pre: { rootFd: number; procSelfFd: number; threadCwd: boolean } | null = null,
  ) {
    this.guestFds = new GuestFds(opts.guestFdLimit);
    this.inodes = new InodeTable(this.guestFds);
    this.handles = new HandleTable(this.guestFds);
    const threadCwd = pre?.threadCwd ?? false;
    this.procSelfFd = pre?.procSelfFd ?? fs.openat(fs.AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC);
    const fd = pre?.rootFd ?? fs.openat(fs.AT_FDCWD, opts.sharedDir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    const st = fs.fstatx(fd);
    this.root = this.inodes.setRoot(fd, Number(st.dev), st.ino, st.mountId, st.mode & fs.S_IFMT);
    this.fileHandles = opts.inodeFileHandles === 'never' ? null : InodeHandles.probe(opts.inodeFileHandles, fd, this.procSelfFd, opts.openInodeFds);
    const t = opts.timeout ?? cacheTimeout(opts.cache);
    this.timeout = Math.floor(t);
    this.timeoutNsec = Math.min(999_999_999, Math.round((t - this.timeout) * 1e9));
    this.files = new HostFiles(opts, this.procSelfFd, threadCwd, this);
    this.xattrs = new Xattrs(opts, this.files, this);
    this.creds = new Credentials(idMaps(opts.translateUid, opts.translateGid), this);
    this.entries = new Entries(this.inodes, this.guestFds, this.fileHandles, this.creds, this, this.timeout, this.timeoutNsec);
    this.locks = new Locks(opts, this.guestFds, this.handles, this.files);
    this.dirs = new DirReader(this.handles, this.inodes, this.entries);
    this.io = new FileIo(opts, this, this.guestFds, this.inodes, this.handles, this.files, this.xattrs, this.locks, this.dirs);
    this.changes = new DirChanges(opts, this.inodes, this.entries, this.creds, this.files, this.xattrs, this.io);
  }

  close(): void {
    this.destroy();
    this.fileHandles?.close();
    closeQuiet(this.root.fd);
    closeQuiet(this.procSelfFd);
  }

  destroy(): void {
    for (const h of this.handles.clear()) closeQuiet(h.fd);
    this.dirs.reset();
    this.inodes.clear();
  }

  inode(nodeid: number): Inode {
    return this.inodes.get(nodeid);
  }

  // ---- attributes -------------------------------------------------------------------------

  /** `found`: where an entry was found (entry replies: its parent, and the entry's mount ID); omitted for GETATTR. */
  toAttr(st: fs.Stat, found: { parent: Inode; mnt: number } | null = null): Attr {
    return this.entries.toAttr(st, found);
  }

  /** FUSE_ATTR_SUBMOUNT for an entry (see Entries.submountFlag). */
  submountFlag(mode: number, dev: number, mnt: number, parent: Inode): number {
    return this.entries.submountFlag(mode, dev, mnt, parent);
  }

  /** The guest's view of a host ID (--translate-uid/gid) in attribute replies. */
  guestId(hostId: number, kind: 'uid' | 'gid'): number {
    return this.creds.guestId(hostId, kind);
  }

  getattr(i: Inode, fh?: number): { attr: Attr; valid: number; validNsec: number } {
    const st = fh !== undefined ? fs.fstat(this.handles.get(fh).fd) : fs.fstat(i.fd);
    return { attr: this.entries.toAttr(st), valid: this.timeout, validNsec: this.timeoutNsec };
  }

  /**
   * SETATTR. `kill` (FATTR_KILL_SUIDGID under FUSE_HANDLE_KILLPRIV_V2): the guest caller lacks CAP_FSETID, so
   * a truncate or chown clears set-user-ID and set-group-ID bits as it would for that caller.
   */
  setattr(i: Inode, a: SetattrIn, kill = false): { attr: Attr; valid: number; validNsec: number } {
    const v = a.valid;
    if (v & (Fattr.MODE | Fattr.UID | Fattr.GID | Fattr.SIZE | Fattr.ATIME | Fattr.MTIME)) writable(this.opts);
    const h: Handle | null = v & Fattr.FH ? this.handles.get(a.fh) : null;
    const proc = String(i.fd);
    if (v & Fattr.MODE) {
      if (h) fs.fchmod(h.fd, a.mode & 0o7777);
      else fs.fchmodat(this.procSelfFd, proc, a.mode & 0o7777, 0);
    }
    if (v & (Fattr.UID | Fattr.GID)) {
      const uid = v & Fattr.UID ? this.creds.hostId(a.uid, 'uid') : -1;
      const gid = v & Fattr.GID ? this.creds.hostId(a.gid, 'gid') : -1;
      // Not without CAP_FSETID, whatever KILL_SUIDGID says (as virtiofsd): the host's chown clears set-user-ID, and
      // set-group-ID with group execute, by itself, and a set-group-ID file without it keeps the bit.
      fs.fchownat(i.fd, '', uid, gid, fs.AT_EMPTY_PATH | fs.AT_SYMLINK_NOFOLLOW);
      this.xattrs.dropInodeCapabilities(i);
    }
    if (v & Fattr.SIZE) {
      // O_NONBLOCK: a host lease on the file answers EAGAIN at once instead of holding every request for lease-break-time.
      const fd = h ? h.fd : this.files.reopen(i, O_WRONLY | O_NONBLOCK);
      try {
        killingPrivs(kill, () => fs.ftruncate(fd, a.size));
        this.xattrs.dropCapabilities(fd);
      } finally {
        if (!h) close(fd);
      }
    }
    if (v & (Fattr.ATIME | Fattr.MTIME)) {
      // Seconds beyond 2^53 either way arrive as bigints (utimensat takes them whole, as the host stores them).
      const at: [number | bigint, number] = v & Fattr.ATIME_NOW ? [0, fs.UTIME_NOW] : v & Fattr.ATIME ? [a.atime, a.atimensec] : [0, fs.UTIME_OMIT];
      const mt: [number | bigint, number] = v & Fattr.MTIME_NOW ? [0, fs.UTIME_NOW] : v & Fattr.MTIME ? [a.mtime, a.mtimensec] : [0, fs.UTIME_OMIT];
      if (i.type === fs.S_IFLNK) {
        // utimensat on a symlink needs the link itself, which only AT_EMPTY_PATH on its O_PATH fd reaches.
        fs.utimensat(i.fd, '', [at[0], at[1], mt[0], mt[1]], fs.AT_EMPTY_PATH | fs.AT_SYMLINK_NOFOLLOW);
      } else fs.utimensat(this.procSelfFd, proc, [at[0], at[1], mt[0], mt[1]], 0);
    }
    return this.getattr(i);
  }

  access(c: Caller, i: Inode, mask: number): void {
    if (mask & 2) writable(this.opts);
    const path = String(i.fd); // before the switch (see DirChanges.createOpen)
    this.creds.asCaller(c, () => fs.faccessat(this.procSelfFd, path, mask, fs.AT_EACCESS));
  }

  readlink(i: Inode): Uint8Array {
    const n = fs.readlinkat(i.fd, '', this.linkBuf);
    return this.linkBuf.subarray(0, n);
  }

  // ---- lookup / forget (entries.ts) ---------------------------------------------------------

  lookup(parent: Inode, name: Uint8Array): EntryOut {
    return this.entries.lookup(parent, name);
  }

  /** LOOKUP for the request loop: nodeid (the stat left in fs.rawStat) or -errno; see Entries.lookupRaw. */
  lookupRaw(parent: Inode, cname: Uint8Array): number {
    return this.entries.lookupRaw(parent, cname);
  }

  forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  /** Between requests: closes inode fds beyond the --inode-file-handles cache size. */
  trimInodeFds(): void {
    this.fileHandles?.trim();
  }

  // ---- creation, removal, rename (dir-changes.ts) -------------------------------------------

  createRaw(c: Caller, parent: Inode, cname: Uint8Array, flags: number, mode: number, umask = 0, kill = false, leaseAgain = false): { nodeid: number; fh: number } {
    return this.changes.createRaw(c, parent, cname, flags, mode, umask, kill, leaseAgain);
  }

  create(
    c: Caller, parent: Inode, name: Uint8Array, flags: number, mode: number, umask = 0, kill = false, label: SecurityContext | null = null, leaseAgain = false,
  ): { entry: EntryOut; fh: number } {
    return this.changes.create(c, parent, name, flags, mode, umask, kill, label, leaseAgain);
  }

  mkdir(c: Caller, parent: Inode, name: Uint8Array, mode: number, umask = 0, label: SecurityContext | null = null): EntryOut {
    return this.changes.mkdir(c, parent, name, mode, umask, label);
  }

  mknod(c: Caller, parent: Inode, name: Uint8Array, mode: number, rdev: number, umask = 0, label: SecurityContext | null = null): EntryOut {
    return this.changes.mknod(c, parent, name, mode, rdev, umask, label);
  }

  symlink(c: Caller, parent: Inode, name: Uint8Array, target: Uint8Array, label: SecurityContext | null = null): EntryOut {
    return this.changes.symlink(c, parent, name, target, label);
  }

  link(oldInode: Inode, newParent: Inode, name: Uint8Array): EntryOut {
    return this.changes.link(oldInode, newParent, name);
  }

  unlink(parent: Inode, name: Uint8Array, dir: boolean): void {
    this.changes.unlink(parent, name, dir);
  }

  rename(parent: Inode, name: Uint8Array, newParent: Inode, newName: Uint8Array, flags: number): void {
    this.changes.rename(parent, name, newParent, newName, flags);
  }

  // ---- open files and their I/O (file-io.ts) ------------------------------------------------

  open(i: Inode, flags: number, kill = false, leaseAgain = false): number {
    return this.io.open(i, flags, kill, leaseAgain);
  }

  opendir(i: Inode): number {
    return this.io.opendir(i);
  }

  release(fh: number, flockUnlock = false): void {
    this.io.release(fh, flockUnlock);
  }

  read(fh: number, offset: FileOffset, iov: IoVecList): number {
    return this.io.read(fh, offset, iov);
  }

  write(fh: number, offset: FileOffset, iov: IoVecList, kill = false, append = false): number {
    return this.io.write(fh, offset, iov, kill, append);
  }

  flush(fh: number, lockOwner: bigint): void {
    this.io.flush(fh, lockOwner);
  }

  syncFd(fh: number): number {
    return this.io.syncFd(fh);
  }

  syncsAtOnce(i: Inode): boolean {
    return this.io.syncsAtOnce(i);
  }

  fsync(fh: number, datasync: boolean): void {
    this.io.fsync(fh, datasync);
  }

  fallocate(fh: number, mode: number, offset: FileOffset, length: FileOffset): void {
    this.io.fallocate(fh, mode, offset, length);
  }

  lseek(fh: number, offset: bigint, whence: number): bigint {
    return this.io.lseek(fh, offset, whence);
  }

  copyFileRange(fhIn: number, offIn: FileOffset, fhOut: number, offOut: FileOffset, len: number, flags: number): number {
    return this.io.copyFileRange(fhIn, offIn, fhOut, offOut, len, flags);
  }

  statfs(i: Inode): Kstatfs {
    return this.io.statfs(i);
  }

  syncfs(i: Inode): void {
    this.io.syncfs(i);
  }

  // ---- directories (dir-reader.ts) ----------------------------------------------------------

  readdir(fh: number, offset: bigint, out: Uint8Array, plus: boolean): number {
    return this.dirs.readdir(fh, offset, out, plus);
  }

  // ---- xattrs (xattrs.ts) -------------------------------------------------------------------

  setxattr(i: Inode, name: Uint8Array, value: Uint8Array, flags: number, killSgid = false): void {
    this.xattrs.setxattr(i, name, value, flags, killSgid);
  }

  getxattr(i: Inode, name: Uint8Array, size: number): number | Uint8Array {
    return this.xattrs.getxattr(i, name, size);
  }

  listxattr(i: Inode, size: number): number | Uint8Array {
    return this.xattrs.listxattr(i, size);
  }

  removexattr(i: Inode, name: Uint8Array): void {
    this.xattrs.removexattr(i, name);
  }

  // ---- locks (locks.ts) ---------------------------------------------------------------------

  getlk(i: Inode, owner: bigint, lk: FileLock, lkFlags: number): FileLock {
    return this.locks.getlk(i, owner, lk, lkFlags);
  }

  setlk(i: Inode, fh: number, owner: bigint, lk: FileLock, lkFlags: number): void {
    this.locks.setlk(i, fh, owner, lk, lkFlags);
  }

  lockBlockers(w: LockWant): bigint[] {
    return this.locks.lockBlockers(w);
  }

  /** Used by diagnostics and tests. */
  stats(): { inodes: number; handles: number } {
    return { inodes: this.inodes.size, handles: this.handles.size };
  }

  describe(): string {
    return `${this.opts.sharedDir} (cache=${this.opts.cache}, xattr=${this.opts.xattr})`;
  }
}
