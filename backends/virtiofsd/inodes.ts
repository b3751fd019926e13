import { closeQuiet } from '../../protocol/sys/fd.js';
import { FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { E, FsError } from './errors.js';

/** A host inode the guest knows: an O_PATH fd plus the guest's lookup count. */
export class Inode {
  /** OFD-lock fds, one per guest lock owner (locks belong to an open file description). */
  lockFds: Map<bigint, number> | null = null;
  constructor(
    readonly nodeid: number,
    readonly fd: number,
    readonly dev: bigint,
    readonly ino: number,
    /** S_IFMT bits. */
    readonly type: number,
    public refcount: number,
  ) {}
}

/** nodeid → inode and (dev, ino) → inode, with FUSE lookup-count semantics. */
export class InodeTable {
  private byId = new Map<number, Inode>();
  private byKey = new Map<string, Inode>();
  private nextId = FUSE_ROOT_ID + 1;

  setRoot(fd: number, dev: bigint, ino: number, type: number): Inode {
    const root = new Inode(FUSE_ROOT_ID, fd, dev, ino, type, 2 ** 52);
    this.byId.set(FUSE_ROOT_ID, root);
    this.byKey.set(`${dev}:${ino}`, root);
    return root;
  }

  get(nodeid: number): Inode {
    const i = this.byId.get(nodeid);
    if (!i) throw new FsError(E.EBADF, 'unknown nodeid', { nodeid });
    return i;
  }

  find(dev: bigint, ino: number): Inode | undefined {
    return this.byKey.get(`${dev}:${ino}`);
  }

  /** Registers a new inode (taking ownership of fd) with one lookup. */
  add(fd: number, dev: bigint, ino: number, type: number): Inode {
    const i = new Inode(this.nextId++, fd, dev, ino, type, 1);
    this.byId.set(i.nodeid, i);
    this.byKey.set(`${dev}:${ino}`, i);
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
  }

  private drop(i: Inode): void {
    this.byId.delete(i.nodeid);
    const key = `${i.dev}:${i.ino}`;
    if (this.byKey.get(key) === i) this.byKey.delete(key);
    if (i.lockFds) for (const fd of i.lockFds.values()) closeQuiet(fd);
    closeQuiet(i.fd);
  }
}

export interface Handle {
  fd: number;
  inode: Inode;
  dir: boolean;
}

export class HandleTable {
  private map = new Map<number, Handle>();
  private next = 1;
  add(h: Handle): number {
    const fh = this.next++;
    this.map.set(fh, h);
    return fh;
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
    return h;
  }
  clear(): Handle[] {
    const all = [...this.map.values()];
    this.map.clear();
    return all;
  }
  get size(): number {
    return this.map.size;
  }
}
