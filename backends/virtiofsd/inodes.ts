import { closeQuiet } from '../../protocol/sys/fd.js';
import { FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { fstat, type FileHandle } from '../../protocol/sys/fs.js';
import { E, FsError } from './errors.js';
import type { GuestFds } from './guest-fds.js';
import { logger } from '../../protocol/log.js';

const log = logger('virtiofsd');

/** An inode number, exact (see Inode.ino). */
export type Ino = number | bigint;

/** Reopens the fd of an inode identified by a file handle (see InodeHandles). */
export interface InodeOpener {
  reopen(i: Inode): number;
  dropped(i: Inode): void;
}

/**
 * A host inode the guest knows: an O_PATH fd plus the guest's lookup count. With
 * --inode-file-handles the inode also has a file handle, and its fd may be closed between requests
 * (`fd` reopens it).
 */
export class Inode {
  /** OFD-lock fds, one per guest lock owner (locks belong to an open file description). */
  lockFds: Map<bigint, number> | null = null;
  private fd_: number;
  private used = true;
  private closed = false;
  constructor(
    readonly nodeid: number,
    fd: number,
    /** st_dev as a number (Linux dev_t values are far below 2^53). */
    readonly dev: number,
    /** Exact: a bigint above 2^53 (overlayfs xino puts the layer in the top bits), where neighbours would round alike. */
    readonly ino: Ino,
    /** The mount it was reached through (statx's mount ID): one directory bind-mounted twice is two inodes. */
    readonly mnt: number,
    /** S_IFMT bits. */
    readonly type: number,
    public refcount: number,
    readonly handle: FileHandle | null = null,
    private readonly opener: InodeOpener | null = null,
  ) {
    this.fd_ = fd;
  }

  /** The inode's O_PATH fd, valid until the current request ends. */
  get fd(): number {
    this.used = true;
    if (this.fd_ < 0) {
      // Forgotten while an open handle still points here (a guest may FORGET what it has open).
      if (this.closed) throw new FsError(E.EBADF, 'inode was forgotten', { nodeid: this.nodeid });
      this.fd_ = (this.opener as InodeOpener).reopen(this);
    }
    return this.fd_;
  }

  /** The host link count, read without counting as a use; -1 without an open fd or when it cannot be read. */
  linkCount(): number {
    if (this.fd_ < 0) return -1;
    try {
      return fstat(this.fd_).nlink;
    } catch {
      return -1;
    }
  }

  /** Whether an fd is open now (a closed one means the inode number alone no longer pins the inode). */
  get isOpen(): boolean {
    return this.fd_ >= 0;
  }

  /** Counts as a use for the fd cache without touching the fd. */
  markUsed(): void {
    this.used = true;
  }

  /** Returns and clears the used-since-last-asked bit (the fd cache's clock). */
  takeUsed(): boolean {
    const u = this.used;
    this.used = false;
    return u;
  }

  /** Closes the fd of a handle inode (reopened on next use). */
  closeFd(): void {
    if (this.handle === null || this.fd_ < 0) return;
    closeQuiet(this.fd_);
    this.fd_ = -1;
  }

  /** Closes the lock owners' fds (their locks go with them); returns how many there were. */
  closeLocks(): number {
    const n = this.lockFds?.size ?? 0;
    if (this.lockFds) for (const fd of this.lockFds.values()) closeQuiet(fd);
    this.lockFds = null;
    return n;
  }

  /** Closes everything the inode holds (it is being dropped). */
  close(): void {
    this.closed = true;
    this.closeLocks();
    if (this.fd_ >= 0) closeQuiet(this.fd_);
    this.fd_ = -1;
    this.opener?.dropped(this);
  }
}

/** nodeid → inode and (mount, dev, ino) → inode, with FUSE lookup-count semantics. */
export class InodeTable {
  /** `fds` counts the inodes' O_PATH fds and lock fds (not those of handle inodes, whose fds are a bounded cache). */
  constructor(private readonly fds: GuestFds) {}
  private byId = new Map<number, Inode>();
  /** mount → dev → ino → inode: number keys, no string building on the LOOKUP path. */
  private byKey = new Map<number, Map<number, Map<Ino, Inode>>>();
  private nextId = FUSE_ROOT_ID + 1;
  /**
   * Inodes identified by a file handle: they need no fd, so GuestFds does not count them, but a guest that never sends
   * FORGET keeps every one (create, unlink, create again: the host frees the file, the table keeps the inode). They
   * are held to the same number as the fds the guest may hold (see handleFits).
   */
  private handleInodes = 0;
  private warnedHandles = false;
  /**
   * statfs f_type per (mount, dev), kept with that pair's inode map: it goes when the last inode there does, since
   * an unmounted file system's dev and mount numbers are handed to the next one mounted (tmpfs then NFS at one place).
   */
  private readonly fsTypes = new WeakMap<Map<Ino, Inode>, number>();

  setRoot(fd: number, dev: number, ino: Ino, mnt: number, type: number): Inode {
    const root = new Inode(FUSE_ROOT_ID, fd, dev, ino, mnt, type, 2 ** 52);
    this.byId.set(FUSE_ROOT_ID, root);
    this.devMap(mnt, dev).set(ino, root);
    return root;
  }

  private devMap(mnt: number, dev: number): Map<Ino, Inode> {
    let devs = this.byKey.get(mnt);
    if (devs === undefined) {
      devs = new Map();
      this.byKey.set(mnt, devs);
    }
    let m = devs.get(dev);
    if (m === undefined) {
      m = new Map();
      devs.set(dev, m);
    }
    return m;
  }

  /** The inode for nodeid, or undefined (hot paths answer EBADF without an exception). */
  tryGet(nodeid: number): Inode | undefined {
    return this.byId.get(nodeid);
  }

  get(nodeid: number): Inode {
    const i = this.byId.get(nodeid);
    if (!i) throw new FsError(E.EBADF, 'unknown nodeid', { nodeid });
    return i;
  }

  /** The f_type of i's file system: `probe(i)` asks the host once per (mount, dev) while inodes there are held. */
  fsType(i: Inode, probe: (i: Inode) => number): number {
    const m = this.byKey.get(i.mnt)?.get(i.dev);
    let t = m === undefined ? undefined : this.fsTypes.get(m);
    if (t === undefined) {
      t = probe(i);
      if (m !== undefined) this.fsTypes.set(m, t);
    }
    return t;
  }

  find(dev: number, ino: Ino, mnt: number): Inode | undefined {
    return this.byKey.get(mnt)?.get(dev)?.get(ino);
  }

  /** Whether one more handle inode fits (false: the caller answers ENFILE, as for fds). */
  handleFits(): boolean {
    if (this.handleInodes < this.fds.limit) return true;
    if (!this.warnedHandles) {
      this.warnedHandles = true;
      log.error({ limit: this.fds.limit }, 'the guest holds as many inodes as it may (ENFILE from now on); --rlimit-nofile raises the limit');
    }
    return false;
  }

  /** Registers a new inode (taking ownership of fd) with one lookup. */
  add(fd: number, dev: number, ino: Ino, mnt: number, type: number, handle: FileHandle | null = null, opener: InodeOpener | null = null): Inode {
    const i = new Inode(this.nextId++, fd, dev, ino, mnt, type, 1, handle, opener);
    if (handle === null) this.fds.took();
    else this.handleInodes++;
    this.byId.set(i.nodeid, i);
    this.devMap(mnt, dev).set(ino, i);
    return i;
  }

  forget(nodeid: number, nlookup: number): void {
    const i = this.byId.get(nodeid);
    if (!i || nodeid === FUSE_ROOT_ID) return;
    i.refcount -= Math.min(nlookup, i.refcount);
    if (i.refcount === 0) this.drop(i);
  }

  get size(): number {
    return this.byId.size;
  }

  /** Drops every inode but the root (DESTROY). */
  clear(): void {
    for (const i of [...this.byId.values()]) if (i.nodeid !== FUSE_ROOT_ID) this.drop(i);
    // The root stays, but not the locks the session's lock owners took on it.
    const root = this.byId.get(FUSE_ROOT_ID);
    if (root !== undefined) this.fds.gave(root.closeLocks());
  }

  private drop(i: Inode): void {
    this.byId.delete(i.nodeid);
    const devs = this.byKey.get(i.mnt);
    const m = devs?.get(i.dev);
    if (m !== undefined && m.get(i.ino) === i) {
      m.delete(i.ino);
      if (m.size === 0) devs?.delete(i.dev);
      if (devs?.size === 0) this.byKey.delete(i.mnt);
    }
    this.fds.gave((i.handle === null ? 1 : 0) + (i.lockFds?.size ?? 0));
    if (i.handle !== null) this.handleInodes--;
    i.close();
  }
}

/** Where a directory handle's stream stands between READDIRs (see PassthroughFs.readdir). */
export interface DirStream {
  /** The cookie a READDIR continuing the stream carries; -1n: unknown (the next one seeks). */
  pos: bigint;
  /** Records read from the directory and not sent yet (linux_dirent64), or null. */
  pending: Buffer | null;
}

export interface Handle {
  fd: number;
  inode: Inode;
  dir: boolean;
  /** The host fd has O_APPEND: the file is append-only (chattr +a) and the guest opened it O_APPEND (see openVia). */
  appendOnly?: boolean;
  /**
   * The file system may answer a read short before the end of the file (FUSE, network: see FULL_READ_FS). Its READs
   * are read on until full, on the request thread: io_uring's own retry of a short read on a FUSE file with direct
   * I/O filled the buffer from the wrong offset (Linux 6.18).
   */
  readsShort?: boolean;
  stream?: DirStream;
}

export class HandleTable {
  constructor(private readonly fds: GuestFds) {}
  private map = new Map<number, Handle>();
  private next = 1;
  add(h: Handle): number {
    this.fds.took();
    const fh = this.next++;
    this.map.set(fh, h);
    return fh;
  }
  tryGet(fh: number): Handle | undefined {
    return this.map.get(fh);
  }
  get(fh: number, inode?: Inode): Handle {
    const h = this.map.get(fh);
    if (!h || (inode && h.inode !== inode)) throw new FsError(E.EBADF, 'unknown file handle', { fh });
    return h;
  }
  /** Removes and returns the handle (caller closes the fd). */
  take(fh: number): Handle {
    const h = this.get(fh);
    this.map.delete(fh);
    this.fds.gave();
    return h;
  }
  clear(): Handle[] {
    const all = [...this.map.values()];
    this.map.clear();
    this.fds.gave(all.length);
    return all;
  }
  get size(): number {
    return this.map.size;
  }
}
