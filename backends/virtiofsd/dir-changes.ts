import * as fs from '../../protocol/sys/fs.js';
import { closeQuiet, O_CLOEXEC, O_CREAT, O_EXCL, O_NOFOLLOW, O_PATH, O_TRUNC } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import type { EntryOut, SecurityContext } from '../../protocol/fuse/index.js';
import { killingPrivs, type Caller, type Credentials } from './credentials.js';
import type { Entries } from './entries.js';
import { E, FsError } from './errors.js';
import type { FileIo } from './file-io.js';
import { checkName, nameErrno } from './guest-names.js';
import { leaseProbe, type HostFiles } from './host-files.js';
import type { Inode, InodeTable } from './inodes.js';
import { writable, type FsOptions } from './options.js';
import { O_ACCMODE, RESOLVE } from './open-flags.js';
import type { Xattrs } from './xattrs.js';

const RENAME_NOREPLACE = 1;
const RENAME_EXCHANGE = 2;
const RENAME_WHITEOUT = 4;
/** open_tree(2) on the empty path gave O_PATH fds here until it failed as unsupported or refused (see pathOf). */
let openTreeWorks = true;

/**
 * The changes a guest makes to directories: new entries (CREATE, MKNOD, MKDIR, SYMLINK, LINK), made with the
 * caller's IDs and the label its LSM chose, and UNLINK, RMDIR and RENAME.
 */
export class DirChanges {
  constructor(
    private readonly opts: FsOptions,
    private readonly inodes: InodeTable,
    private readonly entries: Entries,
    private readonly creds: Credentials,
    private readonly files: HostFiles,
    private readonly xattrs: Xattrs,
    private readonly io: FileIo,
  ) {}

  /**
   * CREATE for the request loop (`cname` NUL-terminated); the new inode's stat is left in fs.rawStat. With `leaseAgain`,
   * an existing file under a host lease is EAGAIN at once (see FileIo.open).
   */
  createRaw(c: Caller, parent: Inode, cname: Uint8Array, flags: number, mode: number, umask = 0, kill = false, leaseAgain = false): { nodeid: number; fh: number } {
    const bad = nameErrno(cname, cname.length - 1);
    if (bad !== 0) throw new FsError(bad, 'bad name');
    this.entries.needForEntry(2); // the new inode and its open file
    const fd = this.createOpen(c, parent, cname, flags, mode, umask, kill, null, leaseAgain);
    if (fd < 0) throw new FsError(-fd, 'create failed');
    const pathFd = this.pathOf(fd);
    const nodeid = pathFd < 0 ? pathFd : this.entries.registerRaw(pathFd);
    if (nodeid < 0) {
      closeQuiet(fd);
      throw new FsError(-nodeid, 'created file vanished');
    }
    const fh = this.io.fileHandle(fd, this.inodes.get(nodeid), flags);
    return { nodeid, fh };
  }

  /**
   * The open(2) of CREATE (`cname` NUL-terminated); fd or -errno. A new file is made with O_EXCL. A name
   * that already exists is opened the way OPEN opens an inode, through an O_PATH fd and only if it is a
   * regular file: a plain O_CREAT open would block this thread on a FIFO, or open a host device
   * through a device node the guest made with MKNOD. A read-only share creates nothing but opens an
   * existing name for reading, as open(2) does on a read-only mount (a lock file opened O_RDONLY|O_CREAT).
   */
  private createOpen(
    c: Caller, parent: Inode, cname: Uint8Array, flags: number, mode: number, umask: number, kill: boolean, label: SecurityContext | null, leaseAgain: boolean,
  ): number {
    const fl = this.files.openFlags(flags) | O_NOFOLLOW;
    const ro = this.opts.readonly;
    if (!ro) {
      const dirFd = parent.fd; // before the switch: reopening an evicted inode by handle needs CAP_DAC_READ_SEARCH
      const fd = this.creds.asCaller(c, () => fs.openat2Raw(dirFd, cname, fl | O_CREAT | O_EXCL, mode & 0o7777, RESOLVE), umask, true);
      // Only a file made here gets the label; an existing one that CREATE opens keeps its own.
      if (fd >= 0 && label !== null) return this.labelNewFile(fd, parent, cname, label);
      if (fd !== -E.EEXIST || (fl & O_EXCL) !== 0) return fd;
    }
    const pathFd = fs.openat2Raw(parent.fd, cname, O_PATH | O_NOFOLLOW, 0, RESOLVE);
    if (pathFd < 0) return ro && pathFd === -E.ENOENT ? -E.EROFS : pathFd;
    if (ro && (fl & O_EXCL) !== 0) {
      closeQuiet(pathFd);
      return -E.EEXIST;
    }
    try {
      const r = fs.fstatRaw(pathFd);
      if (r < 0) return r;
      const type = fs.rawStat.readUInt32LE(24) & fs.S_IFMT;
      if (type !== fs.S_IFREG) return -(type === fs.S_IFDIR ? E.EISDIR : type === fs.S_IFLNK ? E.ELOOP : E.ENXIO);
      // An existing file opened with O_TRUNC: with `kill` its set-user-ID bits go as for an unprivileged caller.
      const fd = killingPrivs(kill, () => this.openExisting(c, String(pathFd), fl, flags, leaseAgain));
      if (fl & O_TRUNC) this.xattrs.dropCapabilities(fd);
      return fd;
    } catch (e) {
      if (e instanceof SysError || e instanceof FsError) return -e.errno;
      throw e;
    } finally {
      closeQuiet(pathFd);
    }
  }

  /**
   * CREATE's open of an existing file (`via` in /proc/self/fd), as the caller: its kernel checked no permission on
   * it. The O_RDWR that the writeback cache adds to O_WRONLY is the daemon's, not the caller's to have: on EACCES the
   * caller's own access mode is checked, then the file is reopened with the daemon's, as OPEN opens it.
   */
  private openExisting(c: Caller, via: string, fl: number, guestFlags: number, leaseAgain: boolean): number {
    const own = (fl & ~O_ACCMODE) | (guestFlags & O_ACCMODE);
    try {
      return this.creds.asCaller(c, () => leaseProbe(fl, leaseAgain, (f) => this.files.openVia(via, f, guestFlags)));
    } catch (e) {
      if (own === fl || !(e instanceof SysError) || e.errno !== E.EACCES) throw e;
    }
    const checked = this.creds.asCaller(c, () => leaseProbe(own, leaseAgain, (f) => this.files.openVia(via, f, guestFlags)));
    try {
      return leaseProbe(fl & ~O_TRUNC, leaseAgain, (f) => this.files.openVia(String(checked), f, guestFlags));
    } finally {
      closeQuiet(checked);
    }
  }

  /** Sets the label on a file CREATE just made (fd open on it); on failure the file goes and -errno is returned. */
  private labelNewFile(fd: number, parent: Inode, cname: Uint8Array, label: SecurityContext): number {
    try {
      this.xattrs.aclXattrAllowed(label.name);
      fs.fsetxattr(fd, this.xattrs.hostXattr(label.name, 'set'), label.value, 0);
      return fd;
    } catch (e) {
      closeQuiet(fd);
      this.unlinkQuiet(parent, cname.subarray(0, cname.length - 1), false);
      if (e instanceof SysError || e instanceof FsError) return -e.errno;
      throw e;
    }
  }

  /**
   * An O_PATH fd on the file `fd` has open (or -errno): CREATE's entry is the inode its handle opened, not whatever the
   * name leads to by the time it is looked up again (another writer on the share may have renamed a file over it).
   */
  private pathOf(fd: number): number {
    if (openTreeWorks) {
      const r = fs.openPathOfRaw(fd);
      if (r >= 0 || (r !== -E.ENOSYS && r !== -E.EPERM && r !== -E.EINVAL)) return r;
      openTreeWorks = false;
    }
    try {
      return fs.openat(this.files.procSelfFd, String(fd), O_PATH | O_CLOEXEC);
    } catch (e) {
      if (e instanceof SysError) return -e.errno;
      throw e;
    }
  }

  private newEntry(parent: Inode, name: Uint8Array): EntryOut {
    return this.entries.register(fs.openat2(parent.fd, name, O_PATH | O_NOFOLLOW, 0, RESOLVE), parent);
  }

  mkdir(c: Caller, parent: Inode, name: Uint8Array, mode: number, umask = 0, label: SecurityContext | null = null): EntryOut {
    checkName(name);
    writable(this.opts);
    this.entries.needForEntry(1); // checked before the creation, which the entry's fd could otherwise not follow
    const dirFd = parent.fd; // before the switch (see createOpen)
    this.creds.asCaller(c, () => fs.mkdirat(dirFd, name, mode & 0o7777), umask, true);
    return this.labelled(parent, name, true, label);
  }

  mknod(c: Caller, parent: Inode, name: Uint8Array, mode: number, rdev: number, umask = 0, label: SecurityContext | null = null): EntryOut {
    checkName(name);
    writable(this.opts);
    this.entries.needForEntry(1);
    const dirFd = parent.fd; // before the switch (see createOpen)
    this.creds.asCaller(c, () => fs.mknodat(dirFd, name, mode, rdev), umask, true);
    return this.labelled(parent, name, false, label);
  }

  symlink(c: Caller, parent: Inode, name: Uint8Array, target: Uint8Array, label: SecurityContext | null = null): EntryOut {
    checkName(name);
    writable(this.opts);
    // As symlink(2): an empty target is ENOENT, one of PATH_MAX or more ENAMETOOLONG.
    if (target.length === 0) throw new FsError(E.ENOENT, 'empty symlink target');
    if (target.length >= 4096) throw new FsError(36, 'symlink target too long');
    this.entries.needForEntry(1);
    const dirFd = parent.fd; // before the switch (see createOpen)
    this.creds.asCaller(c, () => fs.symlinkat(target, dirFd, name), 0, true);
    return this.labelled(parent, name, false, label);
  }

  /**
   * The entry of an inode just created as `name`, with the label the guest's LSM chose (--security-label) set
   * on it. A label that cannot be set undoes the creation: no unlabelled inode is left where the guest's
   * policy expects a labelled one.
   */
  private labelled(parent: Inode, name: Uint8Array, dir: boolean, label: SecurityContext | null): EntryOut {
    const e = this.newEntry(parent, name);
    if (label === null) return e;
    try {
      this.xattrs.aclXattrAllowed(label.name); // a "label" is any xattr name to the wire: not a way around the ACL refusal
      const host = this.xattrs.hostXattr(label.name, 'set');
      this.xattrs.withXattrFd(this.inodes.get(e.nodeid), (fd, p) => (fd !== null ? fs.fsetxattr(fd, host, label.value, 0) : fs.setxattr(p, host, label.value, 0)));
    } catch (err) {
      this.inodes.forget(e.nodeid, 1);
      this.unlinkQuiet(parent, name, dir);
      throw err;
    }
    return e;
  }

  private unlinkQuiet(parent: Inode, name: Uint8Array, dir: boolean): void {
    try {
      fs.unlinkat(parent.fd, name, dir ? fs.AT_REMOVEDIR : 0);
    } catch {
      // Already gone (the guest or the host removed it meanwhile).
    }
  }

  /** CREATE; `leaseAgain` as for createRaw(). */
  create(
    c: Caller, parent: Inode, name: Uint8Array, flags: number, mode: number, umask = 0, kill = false, label: SecurityContext | null = null, leaseAgain = false,
  ): { entry: EntryOut; fh: number } {
    checkName(name);
    this.entries.needForEntry(2);
    const fd = this.createOpen(c, parent, fs.cstr(name), flags, mode, umask, kill, label, leaseAgain);
    if (fd < 0) throw new FsError(-fd, 'create failed');
    let entry: EntryOut;
    try {
      const pathFd = this.pathOf(fd);
      if (pathFd < 0) throw new FsError(-pathFd, 'created file vanished');
      entry = this.entries.register(pathFd, parent);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
    const fh = this.io.fileHandle(fd, this.inodes.get(entry.nodeid), flags);
    return { entry, fh };
  }

  link(oldInode: Inode, newParent: Inode, name: Uint8Array): EntryOut {
    checkName(name);
    writable(this.opts);
    // No fd to count: the new name is an inode the guest holds already.
    // Through the fd's /proc link, as virtiofsd does: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH, or (Linux 6.10+) an
    // fd opened under this thread's current credentials, which every switch to a guest caller replaces.
    fs.linkat(this.files.procSelfFd, String(oldInode.fd), newParent.fd, name, fs.AT_SYMLINK_FOLLOW);
    // The entry is the inode just linked (as virtiofsd's lo_link), not what the name leads to by now: another writer
    // on the share may have renamed a file over it since.
    const st = fs.fstat(oldInode.fd);
    oldInode.refcount++;
    return this.entries.entry(oldInode, st, newParent);
  }

  // ---- removal / rename -------------------------------------------------------------------

  unlink(parent: Inode, name: Uint8Array, dir: boolean): void {
    checkName(name);
    writable(this.opts);
    fs.unlinkat(parent.fd, name, dir ? fs.AT_REMOVEDIR : 0);
  }

  rename(parent: Inode, name: Uint8Array, newParent: Inode, newName: Uint8Array, flags: number): void {
    checkName(name);
    checkName(newName);
    writable(this.opts);
    // RENAME_WHITEOUT too: overlayfs in the guest, its upper layer on this share, leaves whiteouts with it.
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) throw new FsError(E.EINVAL, 'unsupported rename flags', { flags });
    fs.renameat2(parent.fd, name, newParent.fd, newName, flags);
  }
}
