import * as fs from '../../protocol/sys/fs.js';
import { close, closeQuiet, O_APPEND, O_CLOEXEC, O_NONBLOCK, O_RDWR, read } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { type FileLock, FUSE_LK_FLOCK } from '../../protocol/fuse/index.js';
import { E, FsError } from './errors.js';
import type { GuestFds } from './guest-fds.js';
import type { HostFiles } from './host-files.js';
import type { HandleTable, Inode } from './inodes.js';
import { conflicts, parseFdinfoLocks, type LockRange, type LockWant } from './lock-deadlock.js';
import type { FsOptions } from './options.js';

const OFFSET_MAX = 0x7fffffffffffffffn;
/** Why a lock fd cannot open for writing, and a read-only one serves read locks (EPERM: append-only or immutable). */
const LOCK_FD_READ_ONLY = new Set<number>([E.EACCES, E.EROFS, E.ETXTBSY, E.EPERM]);

const dec = new TextDecoder();

/** POSIX locks (OFD locks, one open file description per guest lock owner) and flock(2) locks (-o flock). */
export class Locks {
  /** /proc/self/fdinfo of a lock fd, one line per lock it holds: made by the first blocked SETLKW. */
  private fdinfoBuf: Buffer | null = null;

  constructor(
    private readonly opts: FsOptions,
    private readonly guestFds: GuestFds,
    private readonly handles: HandleTable,
    private readonly files: HostFiles,
  ) {}

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
    if (i.type === fs.S_IFDIR || this.opts.readonly) return this.files.reopen(i, i.type === fs.S_IFDIR ? 0 : O_NONBLOCK);
    // An append-only file (chattr +a) opens for writing only with O_APPEND; an immutable one (+i) not at all (EPERM).
    // O_NONBLOCK: opening for writing breaks a host read lease; EAGAIN at once, not every request held for lease-break-time.
    for (const flags of [O_RDWR | O_NONBLOCK, O_RDWR | O_APPEND | O_NONBLOCK]) {
      try {
        return this.files.reopen(i, flags);
      } catch (e) {
        if (!(e instanceof SysError) || !LOCK_FD_READ_ONLY.has(e.errno)) throw e;
        if (e.errno !== E.EPERM) break;
      }
    }
    return this.files.reopen(i, O_NONBLOCK);
  }

  /** close(2) in the guest: the lock owner's POSIX locks go (the guest kernel does not unlock remote locks itself). */
  dropOwner(i: Inode, owner: bigint): void {
    const lockFd = i.lockFds?.get(owner);
    if (lockFd !== undefined) {
      i.lockFds!.delete(owner);
      this.guestFds.gave();
      close(lockFd);
    }
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
    const fd = this.files.reopen(i, i.type === fs.S_IFDIR ? 0 : O_NONBLOCK);
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
      f = fs.openat(this.files.procSelfFd, `../fdinfo/${fd}`, O_CLOEXEC);
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
