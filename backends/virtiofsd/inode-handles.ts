import { closeQuiet, O_DIRECTORY, O_NONBLOCK, O_PATH, O_RDONLY } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import * as fs from '../../protocol/sys/fs.js';
import { E, FsError } from './errors.js';
import type { Inode, InodeOpener } from './inodes.js';
import type { FileHandleMode } from './options.js';

export function sameHandle(a: fs.FileHandle, b: fs.FileHandle): boolean {
  if (a.mountId !== b.mountId || a.handleType !== b.handleType || a.bytes.length !== b.bytes.length) return false;
  for (let k = 0; k < a.bytes.length; k++) if (a.bytes[k] !== b.bytes[k]) return false;
  return true;
}

/**
 * --inode-file-handles=prefer|mandatory: inodes are identified by file handles (name_to_handle_at)
 * and their O_PATH fds become a cache. Between requests, fds beyond `maxOpen` are closed, least
 * recently used first (clock); an inode whose fd was closed reopens it with open_by_handle_at on its
 * next use. A large tree therefore costs handles in memory, not open files. Eviction only happens in
 * trim() (between requests), so an fd number read during a request stays valid until it ends.
 *
 * `prefer` keeps an fd pinned for inodes whose filesystem has no handles; `mandatory` refuses them.
 */
export class InodeHandles implements InodeOpener {
  /** Handle inodes holding an open fd, oldest first. */
  private readonly open = new Set<Inode>();
  /**
   * Inodes whose last name went while the guest still knew them: their fds stay open (up to maxOpen of them) until
   * FORGET, since no handle opens an unlinked file again (ESTALE). A guest writing back the times of a file it has
   * removed (tar's placeholders for symlinks) got ESTALE, and its next syncfs failed with it.
   */
  private readonly unlinked = new Set<Inode>();
  /**
   * mount id → a directory fd on that mount, open_by_handle_at's mount_fd (which must not be an O_PATH
   * fd: the kernel ignores those there), and how many inodes hold handles on it: the fd closes with the last
   * (an open fd would keep the host from unmounting a submount the guest no longer uses).
   */
  private readonly mountFds = new Map<number, { fd: number; inodes: number }>();
  /** handleOf() opened a mount fd that no inode may take (the lookup found a held inode, or failed). */
  private unclaimed = false;

  private constructor(
    readonly mode: Exclude<FileHandleMode, 'never'>,
    private readonly maxOpen: number,
    /** /proc/self/fd, to turn an O_PATH directory fd into a real one. */
    private readonly procSelfFd: number,
  ) {}

  /**
   * Probes the shared directory (rootFd): a handle must be made and opened again. Returns null when
   * that fails in prefer mode (the caller stays with plain fds); throws FsError in mandatory mode.
   */
  static probe(mode: Exclude<FileHandleMode, 'never'>, rootFd: number, procSelfFd: number, maxOpen: number): InodeHandles | null {
    let mountFd = -1;
    try {
      const h = fs.nameToHandleAt(rootFd, '', fs.AT_EMPTY_PATH);
      mountFd = fs.openat(rootFd, '.', O_DIRECTORY);
      closeQuiet(fs.openByHandleAt(mountFd, h, O_PATH));
      const t = new InodeHandles(mode, Math.max(1, maxOpen), procSelfFd);
      t.mountFds.set(h.mountId, { fd: mountFd, inodes: Infinity }); // the share's own mount: kept
      return t;
    } catch (e) {
      if (mountFd >= 0) closeQuiet(mountFd);
      if (mode === 'prefer') return null;
      const errno = e instanceof SysError ? e.errno : E.EIO;
      throw new FsError(errno, `--inode-file-handles=mandatory: the shared directory does not support file handles (${e instanceof SysError ? e.code : String(e)})`);
    }
  }

  /**
   * The handle of the inode behind the O_PATH fd `fd` (S_IFMT `type`); null if none can be used
   * (prefer); FsError (mandatory). A new mount is entered through its root: a directory, or a regular file
   * bind-mounted on its own (containers' hosts and resolv.conf), which becomes that mount's mount_fd (any open
   * file of the mount will do; an O_PATH one will not). Anything else first met on an unknown mount gets no handle.
   */
  handleOf(fd: number, type: number): fs.FileHandle | null {
    try {
      const h = fs.nameToHandleAt(fd, '', fs.AT_EMPTY_PATH);
      if (!this.mountFds.has(h.mountId)) {
        if (type !== fs.S_IFDIR && type !== fs.S_IFREG) throw new SysError('name_to_handle_at', E.EOPNOTSUPP, { why: 'no mount fd for this mount' });
        // O_NONBLOCK: a host process's lease on a bind-mounted file answers at once (prefer: no handle) instead of holding
        // the request thread for lease-break-time.
        this.mountFds.set(h.mountId, { fd: fs.openat(this.procSelfFd, String(fd), type === fs.S_IFDIR ? O_DIRECTORY : O_RDONLY | O_NONBLOCK), inodes: 0 });
        this.unclaimed = true;
      }
      return h;
    } catch (e) {
      if (this.mode === 'prefer' || !(e instanceof SysError)) return null;
      throw new FsError(e.errno, 'inode has no file handle (--inode-file-handles=mandatory)');
    }
  }

  /** A new inode with a handle (from handleOf) was registered. */
  opened(i: Inode): void {
    this.open.add(i);
    const m = this.mountFds.get((i.handle as fs.FileHandle).mountId);
    if (m !== undefined) m.inodes++;
  }

  reopen(i: Inode): number {
    const h = i.handle as fs.FileHandle;
    const m = this.mountFds.get(h.mountId);
    if (m === undefined) throw new FsError(E.ESTALE, 'no mount for file handle', { mountId: h.mountId });
    const fd = fs.openByHandleAt(m.fd, h, O_PATH);
    this.open.add(i);
    return fd;
  }

  dropped(i: Inode): void {
    this.open.delete(i);
    this.unlinked.delete(i);
    const id = (i.handle as fs.FileHandle).mountId;
    const m = this.mountFds.get(id);
    if (m !== undefined && --m.inodes <= 0) this.closeMount(id, m.fd);
  }

  private closeMount(id: number, fd: number): void {
    closeQuiet(fd);
    this.mountFds.delete(id);
  }

  /** Mount fds open now (the share's own included). */
  get mountCount(): number {
    return this.mountFds.size;
  }

  get openCount(): number {
    return this.open.size;
  }

  /** Closes the fds of the least recently used inodes until at most maxOpen stay open. */
  trim(): void {
    if (this.unclaimed) {
      this.unclaimed = false;
      for (const [id, m] of this.mountFds) if (m.inodes === 0) this.closeMount(id, m.fd);
    }
    if (this.open.size <= this.maxOpen) return;
    for (const i of this.open) {
      if (this.open.size <= this.maxOpen) break;
      this.open.delete(i);
      // Second chance: used since the last sweep moves it to the back (seen once more, then closed).
      if (i.takeUsed()) this.open.add(i);
      else if (this.unlinked.size < this.maxOpen && i.linkCount() === 0) this.unlinked.add(i);
      else i.closeFd();
    }
  }

  close(): void {
    for (const m of this.mountFds.values()) closeQuiet(m.fd);
    this.mountFds.clear();
    this.open.clear();
  }
}
