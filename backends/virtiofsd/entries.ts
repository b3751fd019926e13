import * as fs from '../../protocol/sys/fs.js';
import type { FileHandle } from '../../protocol/sys/fs.js';
import { closeQuiet, O_NOFOLLOW, O_PATH } from '../../protocol/sys/fd.js';
import type { Attr, EntryOut } from '../../protocol/fuse/index.js';
import type { Credentials } from './credentials.js';
import { E, FsError } from './errors.js';
import type { GuestFds } from './guest-fds.js';
import { checkName, nameErrno } from './guest-names.js';
import { sameHandle, type InodeHandles } from './inode-handles.js';
import type { Inode, InodeTable, Ino } from './inodes.js';
import type { Negotiated } from './options.js';
import { RESOLVE } from './open-flags.js';

/**
 * LOOKUPs that found an inode already held, as a saturating score: from half of it up, names are
 * stat'ed first (saves two syscalls on a hit, costs one on a miss, so cold tree walks skip it).
 */
const HELD_SCORE_MAX = 16;

const EMPTY_NAME = new Uint8Array(1);

/** st_dev of fs.rawStat as a number (Linux device numbers are far below 2^53). */
function rawDev(): number {
  return fs.rawStat.readUInt32LE(4) * 0x1_0000_0000 + fs.rawStat.readUInt32LE(0);
}

/** st_ino of fs.rawStat, exact (overlayfs xino puts inode numbers near 2^63, where numbers round neighbours alike). */
function rawIno(): Ino {
  return fs.u64Exact(fs.rawStat, 8);
}

/**
 * The guest's inodes as LOOKUP and creations find them: one lookup reference more for the inode behind a name or a
 * fresh O_PATH fd (a known one, or a new one in the inode table), and the entry and attribute replies for it.
 */
export class Entries {
  /** See HELD_SCORE_MAX; starts at the middle, so the first LOOKUP is stat'ed first. */
  private heldScore = HELD_SCORE_MAX / 2;

  constructor(
    private readonly inodes: InodeTable,
    private readonly guestFds: GuestFds,
    private readonly fileHandles: InodeHandles | null,
    private readonly creds: Credentials,
    private readonly negotiated: Pick<Negotiated, 'submountsNegotiated'>,
    /** Entry and attribute validity handed to the guest: whole seconds and the nanoseconds beyond them. */
    private readonly timeout: number,
    private readonly timeoutNsec: number,
  ) {}

  /** `found`: where an entry was found (entry replies: its parent, and the entry's mount ID); omitted for GETATTR. */
  toAttr(st: fs.Stat, found: { parent: Inode; mnt: number } | null = null): Attr {
    return {
      ino: st.ino, size: st.size, blocks: st.blocks, atime: st.atime, mtime: st.mtime, ctime: st.ctime,
      atimensec: st.atimeNsec, mtimensec: st.mtimeNsec, ctimensec: st.ctimeNsec, mode: st.mode, nlink: st.nlink,
      uid: this.creds.guestId(st.uid, 'uid'), gid: this.creds.guestId(st.gid, 'gid'), rdev: st.rdev, blksize: st.blksize,
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
    return this.negotiated.submountsNegotiated && (dev !== parent.dev || mnt !== parent.mnt) && (mode & fs.S_IFMT) === fs.S_IFDIR ? 1 : 0;
  }

  entry(i: Inode, st: fs.Stat, parent: Inode): EntryOut {
    return {
      nodeid: i.nodeid, generation: 0, entryValid: this.timeout, attrValid: this.timeout,
      entryValidNsec: this.timeoutNsec, attrValidNsec: this.timeoutNsec, attr: this.toAttr(st, { parent, mnt: i.mnt }),
    };
  }

  lookup(parent: Inode, name: Uint8Array): EntryOut {
    checkName(name);
    const nodeid = this.lookupRaw(parent, fs.cstr(name));
    if (nodeid < 0) throw new FsError(-nodeid, 'lookup failed');
    return this.entry(this.inodes.get(nodeid), fs.decodeStat(fs.rawStat), parent);
  }

  /** Adds one lookup reference for the inode behind fd, found in `parent` (closing fd if already known). */
  register(fd: number, parent: Inode): EntryOut {
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
  registerRaw(fd: number): number {
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
  needForEntry(n: number): void {
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
}
