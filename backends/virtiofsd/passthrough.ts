import * as fs from '../../protocol/sys/fs.js';
import type { FileHandle } from '../../protocol/sys/fs.js';
import { close, closeQuiet, dup, dupCloexecRaw, fileStatusFlags, preadv, preadvRest, pwritev, read, RWF_APPEND, setNonBlocking, type FileOffset, type IoVecList } from '../../protocol/sys/fd.js';
import { SysError, rawSyscall } from '../../protocol/sys/libc.js';
import { Fattr, type Attr, type EntryOut, type Kstatfs, type FileLock, type SetattrIn, type SecurityContext, FUSE_LK_FLOCK } from '../../protocol/fuse/index.js';
import { encodeDirent, encodeDirentplus } from '../../protocol/fuse/dirent.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { GuestFds } from './guest-fds.js';
import { InodeHandles, sameHandle } from './inode-handles.js';
import { E, FsError } from './errors.js';
import { HandleTable, Inode, InodeTable, type DirStream, type Handle, type Ino } from './inodes.js';
import { cacheTimeout, type FsOptions } from './options.js';
import { FORBIDDEN, idMaps, type IdMaps } from './idmap.js';
import { XattrMap, type XattrAccess } from './xattrmap.js';
import { conflicts, parseFdinfoLocks, type LockRange, type LockWant } from './lock-deadlock.js';
import { capNumber, withEffectiveCap, withoutEffectiveCap } from '../../protocol/sys/caps.js';

const O_ACCMODE = 3;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const O_NONBLOCK = 0o4000;
const O_DSYNC = 0o10000;
const O_DIRECT = 0o40000;
const O_LARGEFILE = 0o100000;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_NOATIME = 0o1000000;
const O_CLOEXEC = 0o2000000;
const O_SYNC = 0o4010000;
const O_PATH = 0o10000000;
/** Open flags a guest may ask for; everything else (O_PATH, O_TMPFILE, O_NOCTTY...) is dropped. */
const GUEST_OPEN_FLAGS = O_ACCMODE | O_APPEND | O_TRUNC | O_EXCL | O_NONBLOCK | O_DSYNC | O_SYNC | O_DIRECT | O_NOATIME | O_LARGEFILE;
const RESOLVE = fs.RESOLVE_BENEATH | fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS;
const OFFSET_MAX = 0x7fffffffffffffffn;
/**
 * LOOKUP failures of one name that READDIRPLUS lists without an entry (a dead mount point: ENOTCONN, EIO; a mount
 * without file handles under --inode-file-handles=mandatory: EOPNOTSUPP), so the rest of the directory still lists.
 */
const ENTRY_UNREACHABLE = new Set<number>([E.EPERM, E.EIO, E.ENXIO, E.ENODEV, E.EACCES, E.ETIMEDOUT, E.ENOTCONN, E.EHOSTDOWN, E.ESTALE, E.EOPNOTSUPP]);
const RENAME_NOREPLACE = 1;
const RENAME_EXCHANGE = 2;
const RENAME_WHITEOUT = 4;
/** (uid_t)-1 / (gid_t)-1. */
const NO_ID = 0xffffffff;
const XATTR_SIZE_MAX = 65536;
const ACL_ACCESS_XATTR = Buffer.from('system.posix_acl_access');
const ACL_DEFAULT_XATTR = Buffer.from('system.posix_acl_default');
const S_ISGID = 0o2000;
const CAP_FSETID = capNumber('fsetid');
const CAP_DAC_OVERRIDE = capNumber('dac_override');

const log = logger('virtiofsd');
/** Once per write when it fails: rate-limited (see WarnLimiter). */
const capWarn = new WarnLimiter(log);
const dec = new TextDecoder();

export interface Caller {
  uid: number;
  gid: number;
  pid: number;
  /** The supplementary group a creation carries (FUSE_CREATE_SUPP_GROUP), if any. */
  suppGid?: number | null;
}

/**
 * The longest name a guest may send (FUSE_NAME_MAX, as the guest's FUSE client): the host file system applies its own
 * limit, which is not 255 bytes everywhere (vfat and exfat count 255 UTF-16 units, FUSE file systems take 1024).
 */
const NAME_MAX = 1024;

/** errno for a bad guest name in name[0..len), 0 if it is one non-empty component that cannot climb. */
export function nameErrno(name: Uint8Array, len: number): number {
  if (len <= 0) return E.ENOENT;
  if (len > NAME_MAX) return 36; // ENAMETOOLONG
  for (let k = 0; k < len; k++) {
    const b = name[k];
    if (b === 0x2f || b === 0) return E.EINVAL;
  }
  if (name[0] === 0x2e && (len === 1 || (len === 2 && name[1] === 0x2e))) return E.EINVAL;
  return 0;
}

/**
 * LOOKUPs that found an inode already held, as a saturating score: from half of it up, names are
 * stat'ed first (saves two syscalls on a hit, costs one on a miss, so cold tree walks skip it).
 */
const HELD_SCORE_MAX = 16;

/** Why a lock fd cannot open for writing, and a read-only one serves read locks (EPERM: append-only or immutable). */
const LOCK_FD_READ_ONLY = new Set<number>([E.EACCES, E.EROFS, E.ETXTBSY, E.EPERM]);
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

/** st_dev of fs.rawStat as a number (Linux device numbers are far below 2^53). */
function rawDev(): number {
  return fs.rawStat.readUInt32LE(4) * 0x1_0000_0000 + fs.rawStat.readUInt32LE(0);
}

/** st_ino of fs.rawStat, exact (overlayfs xino puts inode numbers near 2^63, where numbers round neighbours alike). */
function rawIno(): Ino {
  return fs.u64Exact(fs.rawStat, 8);
}

const EMPTY_NAME = new Uint8Array(1);

/** Validates a guest-supplied name: one non-empty path component that cannot climb. */
export function checkName(name: Uint8Array): void {
  if (name.length === 0 || name.length > NAME_MAX) throw new FsError(name.length ? 36 : E.ENOENT, 'bad name length');
  if (name.includes(0x2f) || name.includes(0)) throw new FsError(E.EINVAL, 'name contains / or NUL');
  if (name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e))) {
    throw new FsError(E.EINVAL, 'name is . or ..');
  }
}

/**
 * The passthrough filesystem: runs decoded FUSE operations against the shared directory. Every
 * inode is an O_PATH fd; names are resolved one component at a time below the parent's fd with
 * openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so nothing outside the shared directory is reachable.
 */
/** Most bytes of directory records kept across READDIRs, over all directory handles (see PassthroughFs.pendingDirents). */
export const MAX_PENDING_DIRENTS = 16 << 20;

export class PassthroughFs {
  /** The fds the guest makes this filesystem hold, against --rlimit-nofile less what the daemon keeps for itself. */
  readonly guestFds: GuestFds;
  readonly inodes: InodeTable;
  readonly handles: HandleTable;
  private readonly procSelfFd: number;
  readonly root: Inode;
  /** Entry and attribute validity handed to the guest: whole seconds and the nanoseconds beyond them. */
  readonly timeout: number;
  readonly timeoutNsec: number;
  private readonly euid: number;
  private readonly egid: number;
  /** This thread's supplementary groups, restored after a creation that carried the caller's. */
  private readonly groups: number[];
  private warnedGroups = false;
  private readonly direntBuf = Buffer.alloc(64 * 1024);
  /**
   * Bytes of directory records kept for READDIRs to come (DirStream.pending), over every open directory handle. A
   * guest may open directories up to its fd limit and leave each mid-stream: past MAX_PENDING_DIRENTS no more are
   * kept, and such a stream seeks to its cookie on its next READDIR (as virtiofsd does for every READDIR).
   */
  private pendingDirents = 0;
  private readonly linkBuf = Buffer.alloc(4096);
  /** /proc/self/fdinfo of a lock fd, one line per lock it holds: made by the first blocked SETLKW. */
  private fdinfoBuf: Buffer | null = null;
  private readonly xattrMap: XattrMap | null;
  /** Where --xattrmap moves security.capability on the host, or null where the host kernel keeps it (see dropCapabilities). */
  private readonly capXattr: Uint8Array | null;
  /** --translate-uid / --translate-gid, or null when IDs pass unchanged. */
  private readonly ids: IdMaps | null;
  /** See HELD_SCORE_MAX; starts at the middle, so the first LOOKUP is stat'ed first. */
  private heldScore = HELD_SCORE_MAX / 2;
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
  /** True when this thread has its own cwd (unshare(CLONE_FS)), so fchdir is private to it. */
  private readonly threadCwd: boolean;

  constructor(
    readonly opts: FsOptions,
    /** fds opened before a sandbox hid their paths (see sandbox.ts); ownership passes here. */
    pre: { rootFd: number; procSelfFd: number; threadCwd: boolean } | null = null,
  ) {
    this.guestFds = new GuestFds(opts.guestFdLimit);
    this.inodes = new InodeTable(this.guestFds);
    this.handles = new HandleTable(this.guestFds);
    this.threadCwd = pre?.threadCwd ?? false;
    this.procSelfFd = pre?.procSelfFd ?? fs.openat(fs.AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC);
    const fd = pre?.rootFd ?? fs.openat(fs.AT_FDCWD, opts.sharedDir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    const st = fs.fstatx(fd);
    this.root = this.inodes.setRoot(fd, Number(st.dev), st.ino, st.mountId, st.mode & fs.S_IFMT);
    this.fileHandles = opts.inodeFileHandles === 'never' ? null : InodeHandles.probe(opts.inodeFileHandles, fd, this.procSelfFd, opts.openInodeFds);
    const t = opts.timeout ?? cacheTimeout(opts.cache);
    this.timeout = Math.floor(t);
    this.timeoutNsec = Math.min(999_999_999, Math.round((t - this.timeout) * 1e9));
    this.xattrMap = opts.xattrmap ? new XattrMap(opts.xattrmap) : null;
    this.capXattr = movedCapabilityXattr(this.xattrMap);
    this.ids = idMaps(opts.translateUid, opts.translateGid);
    this.euid = rawSyscall(107); // geteuid
    this.egid = rawSyscall(108); // getegid
    this.groups = dropSupplementaryGroups();
  }

  close(): void {
    this.destroy();
    this.fileHandles?.close();
    closeQuiet(this.root.fd);
    closeQuiet(this.procSelfFd);
  }

  destroy(): void {
    for (const h of this.handles.clear()) closeQuiet(h.fd);
    this.pendingDirents = 0;
    this.inodes.clear();
  }

  inode(nodeid: number): Inode {
    return this.inodes.get(nodeid);
  }

  // ---- attributes -------------------------------------------------------------------------

  /** `found`: where an entry was found (entry replies: its parent, and the entry's mount ID); omitted for GETATTR. */
  toAttr(st: fs.Stat, found: { parent: Inode; mnt: number } | null = null): Attr {
    return {
      ino: st.ino, size: st.size, blocks: st.blocks, atime: st.atime, mtime: st.mtime, ctime: st.ctime,
      atimensec: st.atimeNsec, mtimensec: st.mtimeNsec, ctimensec: st.ctimeNsec, mode: st.mode, nlink: st.nlink,
      uid: this.guestId(st.uid, 'uid'), gid: this.guestId(st.gid, 'gid'), rdev: st.rdev, blksize: st.blksize,
      flags: found === null ? 0 : this.submountFlag(st.mode, Number(st.dev), found.mnt, found.parent),
    };
  }

  /**
   * FUSE_ATTR_SUBMOUNT for an entry: a directory on another mount than the directory it was found in (a mount
   * point: another filesystem, or a bind mount of the same one), which the guest then mounts on its own (own st_dev,
   * so inode numbers of two host filesystems do not collide, and a directory bind-mounted at two places is not one
   * directory with two parents). Only the mount point itself: a directory inside it is on its parent's mount.
   */
  submountFlag(mode: number, dev: number, mnt: number, parent: Inode): number {
    return this.submountsNegotiated && (dev !== parent.dev || mnt !== parent.mnt) && (mode & fs.S_IFMT) === fs.S_IFDIR ? 1 : 0;
  }

  private entry(i: Inode, st: fs.Stat, parent: Inode): EntryOut {
    return {
      nodeid: i.nodeid, generation: 0, entryValid: this.timeout, attrValid: this.timeout,
      entryValidNsec: this.timeoutNsec, attrValidNsec: this.timeoutNsec, attr: this.toAttr(st, { parent, mnt: i.mnt }),
    };
  }

  getattr(i: Inode, fh?: number): { attr: Attr; valid: number; validNsec: number } {
    const st = fh !== undefined ? fs.fstat(this.handles.get(fh).fd) : fs.fstat(i.fd);
    return { attr: this.toAttr(st), valid: this.timeout, validNsec: this.timeoutNsec };
  }

  // ---- lookup / forget --------------------------------------------------------------------

  lookup(parent: Inode, name: Uint8Array): EntryOut {
    checkName(name);
    const nodeid = this.lookupRaw(parent, fs.cstr(name));
    if (nodeid < 0) throw new FsError(-nodeid, 'lookup failed');
    return this.entry(this.inodes.get(nodeid), fs.decodeStat(fs.rawStat), parent);
  }

  /** Adds one lookup reference for the inode behind fd, found in `parent` (closing fd if already known). */
  private register(fd: number, parent: Inode): EntryOut {
    let st: fs.Stat & { mountId: number };
    try {
      st = fs.fstatx(fd);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
    const i = this.adopt(fd, Number(st.dev), st.ino, st.mountId, st.mode & fs.S_IFMT);
    if (typeof i === 'number') throw new FsError(-i, 'inode not registered');
    return this.entry(i, st, parent);
  }

  // ---- hot paths: no exceptions for routine failures, stat left raw in fs.rawStat -----------

  /**
   * LOOKUP for the request loop: `cname` is the guest's NUL-terminated name. Returns the nodeid (one
   * more lookup reference; the inode's struct stat is then in fs.rawStat) or -errno.
   */
  lookupRaw(parent: Inode, cname: Uint8Array): number {
    const bad = nameErrno(cname, cname.length - 1);
    if (bad !== 0) return -bad;
    if (this.heldScore >= HELD_SCORE_MAX / 2) {
      // One stat instead of open, stat and close when the name leads to an inode we hold open: the
      // held fd pins the inode, so its (dev, ino) cannot belong to another file. The name is one
      // component and no symlink is followed, so the stat reaches nothing openat2 would refuse.
      const r = fs.statxRaw(parent.fd, cname);
      if (r < 0) return r;
      const held = this.inodes.find(rawDev(), rawIno(), fs.rawMountId());
      if (held !== undefined && held.isOpen) {
        this.noteLookup(true);
        held.markUsed();
        held.refcount++;
        return held.nodeid;
      }
    }
    const fd = fs.openat2Raw(parent.fd, cname, O_PATH | O_NOFOLLOW, 0, RESOLVE);
    if (fd < 0) return fd;
    const known = this.inodes.size;
    const nodeid = this.registerRaw(fd);
    if (nodeid > 0) this.noteLookup(this.inodes.size === known);
    return nodeid;
  }

  /** Moves the score towards stat-first (the inode was already held) or away from it (see HELD_SCORE_MAX). */
  private noteLookup(held: boolean): void {
    this.heldScore = held ? Math.min(HELD_SCORE_MAX, this.heldScore + 1) : Math.max(0, this.heldScore - 1);
  }

  /** Like register() from an fd, but returns nodeid or -errno and keeps the stat raw. */
  private registerRaw(fd: number): number {
    const r = fs.statxRaw(fd, EMPTY_NAME, fs.AT_EMPTY_PATH);
    if (r < 0) {
      closeQuiet(fd);
      return r;
    }
    const i = this.adopt(fd, rawDev(), rawIno(), fs.rawMountId(), fs.rawStat.readUInt32LE(24) & fs.S_IFMT);
    return typeof i === 'number' ? i : i.nodeid;
  }

  /**
   * Before a creation: `n` more fds, and with --inode-file-handles room for one more handle inode, checked before the
   * file is made (an ENFILE after it would leave the guest a file it was told was not created).
   */
  private needForEntry(n: number): void {
    this.guestFds.need(n);
    if (this.fileHandles !== null && !this.inodes.handleFits()) throw new FsError(E.ENFILE, 'guest inode limit reached', { limit: this.guestFds.limit });
  }

  /**
   * One more lookup of the inode behind a fresh O_PATH fd (taking the fd): the known inode with this
   * (dev, ino) on this mount, or a new one. Returns -errno when a file handle is mandatory and cannot be made, or when a new
   * inode would hold one fd more than the guest may have (ENFILE).
   */
  private adopt(fd: number, dev: number, ino: Ino, mnt: number, type: number): Inode | number {
    let i = this.inodes.find(dev, ino, mnt);
    const fh = this.fileHandles;
    let h: FileHandle | null = null;
    try {
      if (i !== undefined && fh !== null && i.handle !== null && !i.isOpen) {
        // Nothing pins a closed inode, so its number may belong to a newer file now: the handle decides.
        h = fh.handleOf(fd, type);
        if (h === null || !sameHandle(h, i.handle)) i = undefined;
      }
      if (i === undefined && fh !== null && h === null) h = fh.handleOf(fd, type);
    } catch (e) {
      closeQuiet(fd);
      return -(e instanceof FsError ? e.errno : E.EIO);
    }
    if (i !== undefined) {
      closeQuiet(fd);
      i.refcount++;
      return i;
    }
    if (h === null ? !this.guestFds.fits(1) : !this.inodes.handleFits()) {
      closeQuiet(fd);
      return -E.ENFILE;
    }
    i = this.inodes.add(fd, dev, ino, mnt, type, h, h === null ? null : fh);
    if (h !== null) fh?.opened(i);
    return i;
  }

  /**
   * An O_PATH fd on the file `fd` has open (or -errno): CREATE's entry is the inode its handle opened, not whatever the
   * name leads to by the time it is looked up again (another writer on the share may have renamed a file over it).
   */
  private pathOf(fd: number): number {
    try {
      return fs.openat(this.procSelfFd, String(fd), O_PATH | O_CLOEXEC);
    } catch (e) {
      if (e instanceof SysError) return -e.errno;
      throw e;
    }
  }

  /** Between requests: closes inode fds beyond the --inode-file-handles cache size. */
  trimInodeFds(): void {
    this.fileHandles?.trim();
  }

  /**
   * CREATE for the request loop (`cname` NUL-terminated); the new inode's stat is left in fs.rawStat. With `leaseAgain`,
   * an existing file under a host lease is EAGAIN at once (see open()).
   */
  createRaw(c: Caller, parent: Inode, cname: Uint8Array, flags: number, mode: number, umask = 0, kill = false, leaseAgain = false): { nodeid: number; fh: number } {
    const bad = nameErrno(cname, cname.length - 1);
    if (bad !== 0) throw new FsError(bad, 'bad name');
    this.needForEntry(2); // the new inode and its open file
    const fd = this.createOpen(c, parent, cname, flags, mode, umask, kill, null, leaseAgain);
    if (fd < 0) throw new FsError(-fd, 'create failed');
    const pathFd = this.pathOf(fd);
    const nodeid = pathFd < 0 ? pathFd : this.registerRaw(pathFd);
    if (nodeid < 0) {
      closeQuiet(fd);
      throw new FsError(-nodeid, 'created file vanished');
    }
    const fh = this.fileHandle(fd, this.inodes.get(nodeid), flags);
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
    const fl = this.openFlags(flags) | O_NOFOLLOW;
    const ro = this.opts.readonly;
    if (!ro) {
      const dirFd = parent.fd; // before the switch: reopening an evicted inode by handle needs CAP_DAC_READ_SEARCH
      const fd = this.asCaller(c, () => fs.openat2Raw(dirFd, cname, fl | O_CREAT | O_EXCL, mode & 0o7777, RESOLVE), umask, true);
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
      const fd = this.killingPrivs(kill, () => this.openExisting(c, String(pathFd), fl, flags, leaseAgain));
      if (fl & O_TRUNC) this.dropCapabilities(fd);
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
      return this.asCaller(c, () => leaseProbe(fl, leaseAgain, (f) => this.openVia(via, f, guestFlags)));
    } catch (e) {
      if (own === fl || !(e instanceof SysError) || e.errno !== E.EACCES) throw e;
    }
    const checked = this.asCaller(c, () => leaseProbe(own, leaseAgain, (f) => this.openVia(via, f, guestFlags)));
    try {
      return leaseProbe(fl & ~O_TRUNC, leaseAgain, (f) => this.openVia(String(checked), f, guestFlags));
    } finally {
      closeQuiet(checked);
    }
  }

  /** Sets the label on a file CREATE just made (fd open on it); on failure the file goes and -errno is returned. */
  private labelNewFile(fd: number, parent: Inode, cname: Uint8Array, label: SecurityContext): number {
    try {
      this.aclXattrAllowed(label.name);
      fs.fsetxattr(fd, this.hostXattr(label.name, 'set'), label.value, 0);
      return fd;
    } catch (e) {
      closeQuiet(fd);
      this.unlinkQuiet(parent, cname.subarray(0, cname.length - 1), false);
      if (e instanceof SysError || e instanceof FsError) return -e.errno;
      throw e;
    }
  }

  forget(nodeid: number, nlookup: number): void {
    this.inodes.forget(nodeid, nlookup);
  }

  // ---- creation (with the caller's fsuid/fsgid) -------------------------------------------

  /**
   * Runs a creation as the caller. `umask` is the guest's when it stopped masking modes itself (POSIX ACLs):
   * the host applies it, unless the parent's default ACL decides the mode. This thread's umask is otherwise 0.
   * `creating`: f makes a new entry (see suppGroupsNegotiated).
   */
  private asCaller<T>(c: Caller, f: () => T, umask = 0, creating = false): T {
    const uid = this.hostId(c.uid, 'uid');
    const gid = this.hostId(c.gid, 'gid');
    const supp = c.suppGid != null ? this.hostId(c.suppGid, 'gid') : -1;
    // (A caller kept as root, see asIds, has every capability anyway.)
    const g = creating && !this.suppGroupsNegotiated && uid !== 0 && uid !== this.euid ? () => withEffectiveCap(CAP_DAC_OVERRIDE, f) : f;
    if (supp < 0 || !this.setGroups([supp])) return this.asIds(uid, gid, g, umask);
    try {
      return this.asIds(uid, gid, g, umask);
    } finally {
      fs.setgroupsThread(this.groups);
    }
  }


  /**
   * Takes `groups` as this thread's supplementary groups: before the uid switch, since changing them needs
   * CAP_SETGID, which a non-root effective uid loses. An unprivileged daemon cannot: it goes on without them.
   */
  private setGroups(groups: number[]): boolean {
    try {
      fs.setgroupsThread(groups);
      return true;
    } catch (e) {
      if (!(e instanceof SysError) || e.errno !== E.EPERM) throw e;
      if (!this.warnedGroups) log.info('no CAP_SETGID: creations run without the supplementary group the guest sends');
      this.warnedGroups = true;
      return false;
    }
  }

  /**
   * Host root is never switched to, as in virtiofsd: a root caller's files get the daemon's own IDs. That changes
   * nothing for a root daemon, and lets an unprivileged one (in its user namespace, where 0 may be unmapped) serve
   * a guest's root.
   */
  private asIds<T>(uid: number, gid: number, f: () => T, umask: number): T {
    const switchGid = gid !== 0 && gid !== this.egid;
    const switchUid = uid !== 0 && uid !== this.euid;
    if (switchGid) fs.setresgidThread(-1, gid, -1);
    if (switchUid) {
      try {
        fs.setresuidThread(-1, uid, -1);
      } catch (e) {
        if (switchGid) fs.setresgidThread(-1, this.egid, -1);
        throw e;
      }
    }
    if (umask !== 0) fs.umask(umask);
    try {
      return f();
    } finally {
      if (umask !== 0) fs.umask(0);
      if (switchUid) fs.setresuidThread(-1, this.euid, -1);
      if (switchGid) fs.setresgidThread(-1, this.egid, -1);
    }
  }

  /** The guest's view of a host ID (--translate-uid/gid) in attribute replies. */
  guestId(hostId: number, kind: 'uid' | 'gid'): number {
    return this.ids === null ? hostId : this.ids[kind].toGuest(hostId);
  }

  /** The host ID for a guest's (--translate-uid/gid); EPERM for one that forbid-guest refuses. */
  private hostId(guestId: number, kind: 'uid' | 'gid'): number {
    const id = this.ids === null ? guestId : this.ids[kind].toHost(guestId);
    if (id === FORBIDDEN) throw new FsError(E.EPERM, `guest ${kind} forbidden by --translate-${kind}`, { [kind]: guestId });
    // (uid_t)-1 means "unchanged" to setresuid and chown: a caller claiming it would act with the daemon's own IDs.
    if (guestId === NO_ID || id === NO_ID) throw new FsError(E.EINVAL, `${kind} 4294967295 is not an ID`, { [kind]: guestId });
    return id;
  }

  /**
   * Runs `f` as a caller without CAP_FSETID when `kill` is set, so the host kernel clears set-user-ID and
   * set-group-ID bits (and file capabilities) exactly as it would for an unprivileged writer, as virtiofsd does.
   */
  private killingPrivs<T>(kill: boolean, f: () => T): T {
    return kill ? withoutEffectiveCap(CAP_FSETID, f) : f();
  }

  private writable(): void {
    if (this.opts.readonly) throw new FsError(E.EROFS, 'read-only share');
  }

  private newEntry(parent: Inode, name: Uint8Array): EntryOut {
    return this.register(fs.openat2(parent.fd, name, O_PATH | O_NOFOLLOW, 0, RESOLVE), parent);
  }

  mkdir(c: Caller, parent: Inode, name: Uint8Array, mode: number, umask = 0, label: SecurityContext | null = null): EntryOut {
    checkName(name);
    this.writable();
    this.needForEntry(1); // checked before the creation, which the entry's fd could otherwise not follow
    const dirFd = parent.fd; // before the switch (see createOpen)
    this.asCaller(c, () => fs.mkdirat(dirFd, name, mode & 0o7777), umask, true);
    return this.labelled(parent, name, true, label);
  }

  mknod(c: Caller, parent: Inode, name: Uint8Array, mode: number, rdev: number, umask = 0, label: SecurityContext | null = null): EntryOut {
    checkName(name);
    this.writable();
    this.needForEntry(1);
    const dirFd = parent.fd; // before the switch (see createOpen)
    this.asCaller(c, () => fs.mknodat(dirFd, name, mode, rdev), umask, true);
    return this.labelled(parent, name, false, label);
  }

  symlink(c: Caller, parent: Inode, name: Uint8Array, target: Uint8Array, label: SecurityContext | null = null): EntryOut {
    checkName(name);
    this.writable();
    // As symlink(2): an empty target is ENOENT, one of PATH_MAX or more ENAMETOOLONG.
    if (target.length === 0) throw new FsError(E.ENOENT, 'empty symlink target');
    if (target.length >= 4096) throw new FsError(36, 'symlink target too long');
    this.needForEntry(1);
    const dirFd = parent.fd; // before the switch (see createOpen)
    this.asCaller(c, () => fs.symlinkat(target, dirFd, name), 0, true);
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
      this.aclXattrAllowed(label.name); // a "label" is any xattr name to the wire: not a way around the ACL refusal
      const host = this.hostXattr(label.name, 'set');
      this.withXattrFd(this.inodes.get(e.nodeid), (fd, p) => (fd !== null ? fs.fsetxattr(fd, host, label.value, 0) : fs.setxattr(p, host, label.value, 0)));
    } catch (err) {
      this.forget(e.nodeid, 1);
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
    this.needForEntry(2);
    const fd = this.createOpen(c, parent, fs.cstr(name), flags, mode, umask, kill, label, leaseAgain);
    if (fd < 0) throw new FsError(-fd, 'create failed');
    let entry: EntryOut;
    try {
      const pathFd = this.pathOf(fd);
      if (pathFd < 0) throw new FsError(-pathFd, 'created file vanished');
      entry = this.register(pathFd, parent);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
    const fh = this.fileHandle(fd, this.inodes.get(entry.nodeid), flags);
    return { entry, fh };
  }

  link(oldInode: Inode, newParent: Inode, name: Uint8Array): EntryOut {
    checkName(name);
    this.writable();
    // No fd to count: the new name is an inode the guest holds already.
    // Through the fd's /proc link, as virtiofsd does: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH, or (Linux 6.10+) an
    // fd opened under this thread's current credentials, which every switch to a guest caller replaces.
    fs.linkat(this.procSelfFd, String(oldInode.fd), newParent.fd, name, fs.AT_SYMLINK_FOLLOW);
    // The entry is the inode just linked (as virtiofsd's lo_link), not what the name leads to by now: another writer
    // on the share may have renamed a file over it since.
    const st = fs.fstat(oldInode.fd);
    oldInode.refcount++;
    return this.entry(oldInode, st, newParent);
  }

  // ---- removal / rename -------------------------------------------------------------------

  unlink(parent: Inode, name: Uint8Array, dir: boolean): void {
    checkName(name);
    this.writable();
    fs.unlinkat(parent.fd, name, dir ? fs.AT_REMOVEDIR : 0);
  }

  rename(parent: Inode, name: Uint8Array, newParent: Inode, newName: Uint8Array, flags: number): void {
    checkName(name);
    checkName(newName);
    this.writable();
    // RENAME_WHITEOUT too: overlayfs in the guest, its upper layer on this share, leaves whiteouts with it.
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) throw new FsError(E.EINVAL, 'unsupported rename flags', { flags });
    fs.renameat2(parent.fd, name, newParent.fd, newName, flags);
  }

  readlink(i: Inode): Uint8Array {
    const n = fs.readlinkat(i.fd, '', this.linkBuf);
    return this.linkBuf.subarray(0, n);
  }

  // ---- setattr ----------------------------------------------------------------------------

  /**
   * SETATTR. `kill` (FATTR_KILL_SUIDGID under FUSE_HANDLE_KILLPRIV_V2): the guest caller lacks CAP_FSETID, so
   * a truncate or chown clears set-user-ID and set-group-ID bits as it would for that caller.
   */
  setattr(i: Inode, a: SetattrIn, kill = false): { attr: Attr; valid: number; validNsec: number } {
    const v = a.valid;
    if (v & (Fattr.MODE | Fattr.UID | Fattr.GID | Fattr.SIZE | Fattr.ATIME | Fattr.MTIME)) this.writable();
    const h: Handle | null = v & Fattr.FH ? this.handles.get(a.fh) : null;
    const proc = String(i.fd);
    if (v & Fattr.MODE) {
      if (h) fs.fchmod(h.fd, a.mode & 0o7777);
      else fs.fchmodat(this.procSelfFd, proc, a.mode & 0o7777, 0);
    }
    if (v & (Fattr.UID | Fattr.GID)) {
      const uid = v & Fattr.UID ? this.hostId(a.uid, 'uid') : -1;
      const gid = v & Fattr.GID ? this.hostId(a.gid, 'gid') : -1;
      // Not without CAP_FSETID, whatever KILL_SUIDGID says (as virtiofsd): the host's chown clears set-user-ID, and
      // set-group-ID with group execute, by itself, and a set-group-ID file without it keeps the bit.
      fs.fchownat(i.fd, '', uid, gid, fs.AT_EMPTY_PATH | fs.AT_SYMLINK_NOFOLLOW);
      if (this.capXattr !== null && i.type === fs.S_IFREG) this.withXattrFd(i, (fd, p) => this.dropCapabilities(fd, p));
    }
    if (v & Fattr.SIZE) {
      // O_NONBLOCK: a host lease on the file answers EAGAIN at once instead of holding every request for lease-break-time.
      const fd = h ? h.fd : this.reopen(i, O_WRONLY | O_NONBLOCK);
      try {
        this.killingPrivs(kill, () => fs.ftruncate(fd, a.size));
        this.dropCapabilities(fd);
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

  // ---- open / read / write ----------------------------------------------------------------

  private openFlags(flags: number): number {
    let f = flags & GUEST_OPEN_FLAGS;
    if (!this.opts.allowDirectIo) f &= ~O_DIRECT;
    if (!this.opts.preserveNoatime) f &= ~O_NOATIME;
    // The kernel's writeback cache may read back pages of a write-only file.
    if (this.writebackNegotiated && (f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
    // O_APPEND alone writes nothing: a read-only open may carry it, as virtiofsd allows.
    if (this.opts.readonly && ((f & O_ACCMODE) !== 0 || f & O_TRUNC)) {
      throw new FsError(E.EROFS, 'read-only share');
    }
    // O_APPEND stays off the host fd (as Rust virtiofsd): a write the guest places, its page cache writing back an
    // mmap or one after it cleared O_APPEND with fcntl, lands where it says; WRITE appends when its flags ask.
    return (f & ~O_APPEND) | O_CLOEXEC;
  }

  /** Opens the inode for I/O through its /proc/self/fd link; only regular files and directories. */
  private reopen(i: Inode, flags: number, guestFlags = 0): number {
    if (i.type !== fs.S_IFREG && i.type !== fs.S_IFDIR) throw new FsError(E.EBADF, 'not a regular file or directory');
    return this.openVia(String(i.fd), flags, guestFlags);
  }

  /**
   * Opens `via`, a name in /proc/self/fd, with host flags `fl`. A file the host keeps append-only (chattr +a) opens
   * for writing only with O_APPEND: when the guest asked for it (`guestFlags`), the fd gets it after all.
   */
  private openVia(via: string, fl: number, guestFlags: number): number {
    const flags = (fl & ~O_NOFOLLOW) | O_CLOEXEC;
    try {
      return fs.openat(this.procSelfFd, via, flags);
    } catch (e) {
      if (!(e instanceof SysError) || e.errno !== E.EPERM || (guestFlags & O_APPEND) === 0 || (flags & O_APPEND) !== 0) throw e;
      // Not under the writeback cache: the guest's page cache writes pages back where they lie, and an O_APPEND fd
      // would append them again (QEMU's virtiofsd refuses the open too).
      if (this.writebackNegotiated) throw e;
      return fs.openat(this.procSelfFd, via, flags | O_APPEND);
    }
  }

  /**
   * OPEN; `kill`: an O_TRUNC by a guest caller without CAP_FSETID (see setattr). `leaseAgain`: when a host process
   * holds a lease the open must break, throw EAGAIN at once (the caller waits for it elsewhere) rather than block
   * this thread, and every request behind it, for up to lease-break-time (45 s).
   */
  open(i: Inode, flags: number, kill = false, leaseAgain = false): number {
    const fl = this.openFlags(flags);
    this.guestFds.need(1);
    const fd = this.killingPrivs(kill && (fl & O_TRUNC) !== 0, () => leaseProbe(fl, leaseAgain, (f) => this.reopen(i, f, flags)));
    if (fl & O_TRUNC) this.dropCapabilities(fd);
    return this.fileHandle(fd, i, flags);
  }

  /** A handle for a file opened with the guest's `guestFlags`; it notes a host fd that had to take O_APPEND. */
  private fileHandle(fd: number, inode: Inode, guestFlags: number): number {
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
    if (h.stream?.pending) this.pendingDirents -= h.stream.pending.length;
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
   * WRITE; `kill`: the guest writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID), see setattr. `append`: at the end of
   * the file whatever the offset, atomically (the guest's file has O_APPEND, see appends()).
   */
  write(fh: number, offset: FileOffset, iov: IoVecList, kill = false, append = false): number {
    this.writable();
    const h = this.handles.get(fh);
    // An append-only file: a WRITE that is not an append (the guest cleared O_APPEND with fcntl, or wrote through a
    // shared mapping, which the host would have refused) would land at the end, not where it says.
    if (h.appendOnly === true && !append) throw new FsError(E.EPERM, 'append-only file');
    const fd = h.fd;
    // With the writeback cache the guest's kernel owns the end of the file (pages it has not written back lie beyond
    // the host's): every write goes where it says, as virtiofsd does.
    const rwf = append && !this.writebackNegotiated ? RWF_APPEND : 0;
    const n = this.killingPrivs(kill, () => pwritev(fd, iov, offset, rwf));
    if (n < 0) throw new FsError(E.EAGAIN, 'write would block');
    if (n > 0) this.dropCapabilities(fd);
    return n;
  }

  /**
   * close(2) in the guest: the lock owner's POSIX locks go (the guest kernel does not unlock remote
   * locks itself), and closing a duplicate runs the host filesystem's flush (NFS writes back here).
   */
  flush(fh: number, lockOwner: bigint): void {
    const h = this.handles.get(fh);
    const lockFd = h.inode.lockFds?.get(lockOwner);
    if (lockFd !== undefined) {
      h.inode.lockFds!.delete(lockOwner);
      this.guestFds.gave();
      close(lockFd);
    }
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
    this.writable();
    fs.fallocate(this.handles.get(fh).fd, mode, offset, length);
  }

  lseek(fh: number, offset: bigint, whence: number): bigint {
    return fs.lseek(this.handles.get(fh).fd, offset, whence);
  }

  copyFileRange(fhIn: number, offIn: FileOffset, fhOut: number, offOut: FileOffset, len: number, flags: number): number {
    this.writable();
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
    const fd = i.type === fs.S_IFDIR ? fs.openat(i.fd, '.', O_DIRECTORY | O_CLOEXEC) : this.reopen(i, O_NONBLOCK);
    try {
      fs.syncfs(fd);
    } finally {
      close(fd);
    }
  }

  access(c: Caller, i: Inode, mask: number): void {
    if (mask & 2) this.writable();
    const path = String(i.fd); // before the switch (see createOpen)
    this.asCaller(c, () => fs.faccessat(this.procSelfFd, path, mask, fs.AT_EACCESS));
  }

  // ---- directories ------------------------------------------------------------------------

  /**
   * Fills out with fuse_dirent(plus) records starting at the directory cookie `offset`; returns bytes used. A READDIR
   * that goes on where the last one on this handle stopped reads on from the directory stream (entries read but not
   * sent are kept for it) instead of seeking to the cookie: on a file system whose cookies are positions (ramfs,
   * tmpfs before Linux 6.6) a seek after removals lands past entries never sent, and `rm -rf` left half a directory.
   */
  readdir(fh: number, offset: bigint, out: Uint8Array, plus: boolean): number {
    const h = this.handles.get(fh);
    if (!h.dir) throw new FsError(E.ENOTDIR, 'not a directory handle');
    const stream = h.stream ?? (h.stream = { pos: 0n, pending: null });
    let pending = stream.pending;
    if (offset !== stream.pos) {
      fs.lseek(h.fd, offset, fs.SEEK_SET);
      pending = null;
    }
    // Until this call ends well the stream's place is unknown: the next READDIR seeks.
    stream.pos = -1n;
    if (stream.pending !== null) this.pendingDirents -= stream.pending.length;
    stream.pending = null;
    const buf = this.direntBuf;
    const r = { used: 0, pos: offset };
    if (pending !== null && this.encodeDirents(h, pending, pending.length, out, plus, r, stream)) return r.used;
    for (;;) {
      let n: number;
      try {
        n = fs.getdents64(h.fd, buf.subarray(0, Math.min(buf.length, Math.max(out.length, 512))));
      } catch (e) {
        // The directory went (removed on the host) after some entries were encoded: they go out, with the lookups
        // READDIRPLUS took for them, which the guest could never forget had the reply been an error.
        if (r.used > 0) return r.used;
        throw e;
      }
      if (n === 0) {
        stream.pos = r.pos;
        return r.used;
      }
      if (this.encodeDirents(h, buf, n, out, plus, r, stream)) return r.used;
    }
  }

  /**
   * Encodes the linux_dirent64 records in src[0, n) into out from r.used on, advancing r.used and r.pos (the cookie
   * after the last record sent). Returns true when out is full or an error ends the reply; the records not sent are
   * then kept in `stream` (if the reply is whole) for a READDIR that continues from r.pos.
   */
  private encodeDirents(h: Handle, src: Buffer, n: number, out: Uint8Array, plus: boolean, r: { used: number; pos: bigint }, stream: DirStream): boolean {
    let p = 0;
    while (p < n) {
      const at = p;
      const ino = fs.u64Exact(src, p);
      const off = src.readBigUInt64LE(p + 8);
      const reclen = src.readUInt16LE(p + 16);
      const type = src[p + 18];
      let end = p + 19;
      while (end < p + reclen && src[end] !== 0) end++;
      const name = src.subarray(p + 19, end);
      p += reclen;
      const dot = name.length <= 2 && name[0] === 0x2e && (name.length === 1 || name[1] === 0x2e);
      let next: number;
      if (!plus) {
        next = encodeDirent(out, r.used, { ino, off, type, name });
      } else {
        let entry: EntryOut | null = null;
        if (!dot) {
          try {
            entry = this.lookup(h.inode, name);
          } catch (e) {
            if ((e instanceof SysError || e instanceof FsError) && e.errno === E.ENOENT) {
              r.pos = off; // raced with an unlink: skipped, as if sent
              continue;
            }
            // The name is there but cannot be looked up (a dead mount point: ENOTCONN, EIO): listed without an entry
            // (nodeid 0, as for . and ..), so that the rest of the directory can still be read; a LOOKUP of it then
            // answers the error, as stat(2) on the host does. Any other failure (the directory's own inode, no fds
            // left) ends the reply as before.
            if (!(e instanceof SysError || e instanceof FsError) || !ENTRY_UNREACHABLE.has(e.errno)) {
              if (r.used > 0) return true;
              throw e;
            }
          }
        }
        if (entry === null) {
          entry = { nodeid: 0, generation: 0, entryValid: 0, attrValid: 0, entryValidNsec: 0, attrValidNsec: 0,
            attr: { ino, size: 0, blocks: 0, atime: 0, mtime: 0, ctime: 0, atimensec: 0, mtimensec: 0, ctimensec: 0,
              mode: type << 12, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0, flags: 0 } };
        }
        next = encodeDirentplus(out, r.used, entry, { ino, off, type, name });
        if (next < 0 && entry.nodeid !== 0) this.forget(entry.nodeid, 1);
      }
      if (next < 0) {
        // Over the budget the records are dropped, and stream.pos stays unknown: the next READDIR seeks.
        if (this.pendingDirents + (n - at) > MAX_PENDING_DIRENTS) return true;
        stream.pos = r.pos;
        stream.pending = Buffer.from(src.subarray(at, n));
        this.pendingDirents += n - at;
        return true;
      }
      r.used = next;
      r.pos = off;
    }
    return false;
  }

  // ---- xattrs -----------------------------------------------------------------------------

  private xattrOn(): void {
    if (!this.opts.xattr) throw new FsError(E.ENOSYS, 'xattrs disabled');
  }

  /** Runs f with an fd usable by f*xattr, or with null for symlinks/special files (then the /proc path is used). */
  private withXattrFd<T>(i: Inode, f: (fd: number | null, proc: string) => T): T {
    if (i.type !== fs.S_IFREG && i.type !== fs.S_IFDIR) {
      // No *xattrat calls: reach the inode through its /proc/self/fd link. A sandboxed thread has no
      // /proc mounted but its own cwd (unshare(CLONE_FS)), so it may chdir into the fd directory.
      if (!this.threadCwd) return f(null, `/proc/self/fd/${i.fd}`);
      fs.fchdir(this.procSelfFd);
      return f(null, String(i.fd));
    }
    // O_NONBLOCK: a host process's lease on the file answers EAGAIN at once instead of holding this thread, and every
    // request behind it, for lease-break-time (45 s), as virtiofsd opens it.
    const fd = this.reopen(i, i.type === fs.S_IFDIR ? O_DIRECTORY : O_NONBLOCK);
    try {
      return f(fd, '');
    } finally {
      close(fd);
    }
  }

  /**
   * `killSgid` (FUSE_SETXATTR_ACL_KILL_SGID, only sent under --posix-acl): the caller setting an access ACL
   * may not keep the set-group-ID bit, which this daemon (CAP_FSETID) would otherwise keep for it.
   */
  setxattr(i: Inode, name: Uint8Array, value: Uint8Array, flags: number, killSgid = false): void {
    this.xattrOn();
    this.aclXattrAllowed(name);
    this.writable();
    const host = this.hostXattr(name, 'set');
    this.withXattrFd(i, (fd, p) => (fd !== null ? fs.fsetxattr(fd, host, value, flags) : fs.setxattr(p, host, value, flags)));
    if (killSgid && ACL_ACCESS_XATTR.equals(name)) {
      const mode = fs.fstat(i.fd).mode;
      if (mode & S_ISGID) fs.fchmodat(this.procSelfFd, String(i.fd), mode & 0o7777 & ~S_ISGID, 0);
    }
  }

  /** The ACL xattrs exist for the guest only with POSIX ACLs agreed (see aclsNegotiated). */
  private aclXattrAllowed(name: Uint8Array): void {
    if (!this.aclsNegotiated && isAclName(name)) throw new FsError(E.EOPNOTSUPP, 'POSIX ACLs are not enabled (--posix-acl)');
  }

  /**
   * The host kernel drops security.capability when a file is written, truncated or chowned; moved elsewhere by
   * --xattrmap it is an ordinary xattr to the host, so the daemon drops it itself (as virtiofsd does). A guest
   * with FUSE_HANDLE_KILLPRIV_V2 relies on that. `proc`: the /proc path when fd is null (an O_PATH inode).
   */
  private dropCapabilities(fd: number | null, proc = ''): void {
    const name = this.capXattr;
    if (name === null) return;
    try {
      if (fd !== null) fs.fremovexattr(fd, name);
      else fs.removexattr(proc, name);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      // The change it follows is made already: a failure here must not turn it into an error for the guest.
      if (e.errno !== E.ENODATA && e.errno !== E.EOPNOTSUPP) capWarn.warn({ err: e.message }, 'could not drop the moved security.capability xattr');
    }
  }

  private hostXattr(name: Uint8Array, access: XattrAccess): Uint8Array {
    return this.xattrMap?.toServer(name, access) ?? name;
  }

  /** size 0 asks for the value's length. */
  getxattr(i: Inode, name: Uint8Array, size: number): number | Uint8Array {
    this.xattrOn();
    this.aclXattrAllowed(name);
    const host = this.hostXattr(name, 'get');
    const buf = size > 0 ? Buffer.alloc(Math.min(size, XATTR_SIZE_MAX)) : null;
    const n = this.withXattrFd(i, (fd, p) => (fd !== null ? fs.fgetxattr(fd, host, buf) : fs.getxattr(p, host, buf)));
    return buf ? buf.subarray(0, n) : n;
  }

  listxattr(i: Inode, size: number): number | Uint8Array {
    this.xattrOn();
    const map = this.xattrMap;
    const filtered = map !== null || !this.aclsNegotiated;
    // Mapped or hidden names change the list's length: the whole host list is read even when only its size is asked.
    const buf = filtered ? Buffer.alloc(XATTR_SIZE_MAX) : size > 0 ? Buffer.alloc(Math.min(size, XATTR_SIZE_MAX)) : null;
    const n = this.withXattrFd(i, (fd, p) => (fd !== null ? fs.flistxattr(fd, buf) : fs.listxattr(p, buf)));
    if (!filtered) return buf ? buf.subarray(0, n) : n;
    const mapped = map !== null ? map.mapList((buf as Buffer).subarray(0, n)) : (buf as Buffer).subarray(0, n);
    const list = this.aclsNegotiated ? mapped : withoutAclNames(mapped);
    if (size === 0) return list.length;
    if (list.length > size) throw new FsError(E.ERANGE, 'xattr list larger than the buffer', { size, needed: list.length });
    return list;
  }

  removexattr(i: Inode, name: Uint8Array): void {
    this.xattrOn();
    this.aclXattrAllowed(name);
    this.writable();
    const host = this.hostXattr(name, 'set');
    this.withXattrFd(i, (fd, p) => (fd !== null ? fs.fremovexattr(fd, host) : fs.removexattr(p, host)));
  }

  // ---- POSIX locks (OFD locks, one open file description per guest lock owner) -------------

  private lockFd(i: Inode, owner: bigint): number {
    if (!this.opts.posixLock) throw new FsError(E.ENOSYS, 'posix locks disabled');
    i.lockFds ??= new Map();
    let fd = i.lockFds.get(owner);
    if (fd === undefined) {
      this.guestFds.need(1);
      fd = this.lockReopen(i);
      i.lockFds.set(owner, fd);
      this.guestFds.took();
    }
    return fd;
  }

  /**
   * The open file a lock owner's OFD locks hang on: read-write, so that it can take write locks, unless the share is
   * read-only or the file cannot be opened for writing (read-only file or mount, a binary being run): read locks
   * still work there, and a read-only share never holds a writable fd (one would keep the host from running the file).
   */
  private lockReopen(i: Inode): number {
    if (i.type === fs.S_IFDIR || this.opts.readonly) return this.reopen(i, i.type === fs.S_IFDIR ? 0 : O_NONBLOCK);
    // An append-only file (chattr +a) opens for writing only with O_APPEND; an immutable one (+i) not at all (EPERM).
    // O_NONBLOCK: opening for writing breaks a host read lease; EAGAIN at once, not every request held for lease-break-time.
    for (const flags of [O_RDWR | O_NONBLOCK, O_RDWR | O_APPEND | O_NONBLOCK]) {
      try {
        return this.reopen(i, flags);
      } catch (e) {
        if (!(e instanceof SysError) || !LOCK_FD_READ_ONLY.has(e.errno)) throw e;
        if (e.errno !== E.EPERM) break;
      }
    }
    return this.reopen(i, O_NONBLOCK);
  }

  getlk(i: Inode, owner: bigint, lk: FileLock, lkFlags: number): FileLock {
    if (lkFlags & FUSE_LK_FLOCK) throw new FsError(E.EINVAL, 'flock locks cannot be tested');
    const fl = toFlock(lk);
    const held = this.opts.posixLock ? i.lockFds?.get(owner) : undefined;
    if (held !== undefined) return fromFlock(fs.fcntlLock(held, fs.F_OFD_GETLK, fl));
    // An owner that holds nothing here tests through an open file of its own that holds nothing either: read-only,
    // so that testing breaks no host process's read lease (a writable open would, and answer EWOULDBLOCK).
    if (!this.opts.posixLock) throw new FsError(E.ENOSYS, 'posix locks disabled');
    this.guestFds.need(1);
    const fd = this.reopen(i, i.type === fs.S_IFDIR ? 0 : O_NONBLOCK);
    try {
      return fromFlock(fs.fcntlLock(fd, fs.F_OFD_GETLK, fl));
    } finally {
      close(fd);
    }
  }

  /**
   * Takes or drops a lock without waiting: a lock held elsewhere is EAGAIN (the server decides whether to wait).
   * flock(2) locks (FUSE_LK_FLOCK, with -o flock) belong to the guest's open file, so to the handle's host fd.
   */
  setlk(i: Inode, fh: number, owner: bigint, lk: FileLock, lkFlags: number): void {
    if (lkFlags & FUSE_LK_FLOCK) {
      if (!this.opts.flock) throw new FsError(E.ENOSYS, 'flock locks are off (-o flock)');
      const op = lk.type === fs.F_RDLCK ? fs.LOCK_SH : lk.type === fs.F_WRLCK ? fs.LOCK_EX : lk.type === fs.F_UNLCK ? fs.LOCK_UN : 0;
      if (op === 0) throw new FsError(E.EINVAL, 'bad lock type');
      fs.flock(this.handles.get(fh, i).fd, op | fs.LOCK_NB);
      return;
    }
    const fl = toFlock(lk);
    // An owner with no open file here holds no lock to drop: nothing to open (which could break a host lease).
    if (fl.type === fs.F_UNLCK && this.opts.posixLock && i.lockFds?.get(owner) === undefined) return;
    fs.fcntlLock(this.lockFd(i, owner), fs.F_OFD_SETLK, fl);
  }

  /** The owners here whose POSIX locks on the wanted inode conflict with `w` (a host process's locks are not seen). */
  lockBlockers(w: LockWant): bigint[] {
    const out: bigint[] = [];
    for (const [owner, fd] of (w.inode as Inode).lockFds ?? []) {
      if (owner !== w.owner && this.heldLocks(fd).some((l) => conflicts(l, w))) out.push(owner);
    }
    return out;
  }

  /** The OFD locks on lock fd `fd`, from /proc/self/fdinfo (reached from /proc/self/fd, opened before the sandbox). */
  private heldLocks(fd: number): LockRange[] {
    let f = -1;
    try {
      f = fs.openat(this.procSelfFd, `../fdinfo/${fd}`, O_CLOEXEC);
      const buf = (this.fdinfoBuf ??= Buffer.alloc(256 * 1024));
      let n = 0;
      for (let k; n < buf.length && (k = read(f, buf.subarray(n))) > 0;) n += k;
      return parseFdinfoLocks(dec.decode(buf.subarray(0, n)));
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      return [];
    } finally {
      if (f >= 0) closeQuiet(f);
    }
  }

  /** Used by diagnostics and tests. */
  stats(): { inodes: number; handles: number } {
    return { inodes: this.inodes.size, handles: this.handles.size };
  }

  describe(): string {
    return `${this.opts.sharedDir} (cache=${this.opts.cache}, xattr=${this.opts.xattr})`;
  }
}

/**
 * Opens with `fl` through `openWith`; with `leaseAgain` (and no O_NONBLOCK of the guest's) the open is made O_NONBLOCK,
 * so that a host lease it would have to break is EAGAIN at once instead of a wait of up to lease-break-time, and the fd
 * then has O_NONBLOCK cleared.
 */
function leaseProbe(fl: number, leaseAgain: boolean, openWith: (fl: number) => number): number {
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

/** The host name --xattrmap gives security.capability, when it is not that name itself (null: unmoved or refused). */
function movedCapabilityXattr(map: XattrMap | null): Uint8Array | null {
  if (map === null) return null;
  const name = Buffer.from('security.capability');
  try {
    const host = map.toServer(name, 'set');
    return Buffer.compare(Buffer.from(host), name) === 0 ? null : host;
  } catch {
    return null; // the guest cannot set it at all
  }
}

/** The guest's lock as a struct flock; a type or range the kernel could not have sent is EINVAL. */
function toFlock(lk: FileLock): fs.Flock {
  if (lk.type !== fs.F_RDLCK && lk.type !== fs.F_WRLCK && lk.type !== fs.F_UNLCK) throw new FsError(E.EINVAL, 'bad lock type');
  if (lk.start > OFFSET_MAX || lk.end < lk.start) throw new FsError(E.EINVAL, 'bad lock range');
  const len = lk.end >= OFFSET_MAX ? 0n : lk.end - lk.start + 1n;
  return { type: lk.type, whence: fs.SEEK_SET, start: lk.start, len, pid: 0 };
}

function fromFlock(f: fs.Flock): FileLock {
  if (f.type === fs.F_UNLCK) return { start: 0n, end: 0n, type: fs.F_UNLCK, pid: 0 };
  return { start: f.start, end: f.len === 0n ? OFFSET_MAX : f.start + f.len - 1n, type: f.type, pid: f.pid < 0 ? 0 : f.pid };
}

export { log as fsLog, dec as utf8 };

/**
 * Leaves this thread (the request thread) without supplementary groups, as virtiofsd does at start: a caller it
 * switches to must not act with the groups of whoever started the daemon (root's group 0, a service's extra groups).
 * Returns the groups the thread keeps: none, or its own where it may not change them (no CAP_SETGID, where it
 * switches to no caller either).
 */
function dropSupplementaryGroups(): number[] {
  try {
    fs.setgroupsThread([]);
    return [];
  } catch (e) {
    if (!(e instanceof SysError) || e.errno !== E.EPERM) throw e;
    return fs.getgroupsThread();
  }
}

function isAclName(name: Uint8Array): boolean {
  return ACL_ACCESS_XATTR.equals(name) || ACL_DEFAULT_XATTR.equals(name);
}

/** A listxattr list (NUL-terminated names) without the ACL names. */
function withoutAclNames(list: Uint8Array): Uint8Array {
  const kept: Uint8Array[] = [];
  for (let at = 0; at < list.length;) {
    let end = list.indexOf(0, at);
    if (end < 0) end = list.length;
    if (!isAclName(list.subarray(at, end))) kept.push(list.subarray(at, end + 1));
    at = end + 1;
  }
  return Buffer.concat(kept);
}

/** statfs f_type of an inode's file system (InodeTable.fsType caches it; a module function: no closure per FLUSH). */
function statfsType(i: Inode): number {
  return fs.fstatfs(i.fd).type;
}
