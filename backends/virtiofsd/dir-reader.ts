import * as fs from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import type { EntryOut } from '../../protocol/fuse/index.js';
import { encodeDirent, encodeDirentplus } from '../../protocol/fuse/dirent.js';
import type { Entries } from './entries.js';
import { E, FsError } from './errors.js';
import type { DirStream, Handle, HandleTable, InodeTable } from './inodes.js';

/**
 * LOOKUP failures of one name that READDIRPLUS lists without an entry (a dead mount point: ENOTCONN, EIO; a mount
 * without file handles under --inode-file-handles=mandatory: EOPNOTSUPP), so the rest of the directory still lists.
 */
const ENTRY_UNREACHABLE = new Set<number>([E.EPERM, E.EIO, E.ENXIO, E.ENODEV, E.EACCES, E.ETIMEDOUT, E.ENOTCONN, E.EHOSTDOWN, E.ESTALE, E.EOPNOTSUPP]);

/** Most bytes of directory records kept across READDIRs, over all directory handles (see DirReader.pendingDirents). */
export const MAX_PENDING_DIRENTS = 16 << 20;

/** READDIR and READDIRPLUS: host directory records read with getdents64, encoded as fuse_dirent(plus). */
export class DirReader {
  private readonly direntBuf = Buffer.alloc(64 * 1024);
  /**
   * Bytes of directory records kept for READDIRs to come (DirStream.pending), over every open directory handle. A
   * guest may open directories up to its fd limit and leave each mid-stream: past MAX_PENDING_DIRENTS no more are
   * kept, and such a stream seeks to its cookie on its next READDIR (as virtiofsd does for every READDIR).
   */
  private pendingDirents = 0;

  constructor(
    private readonly handles: HandleTable,
    private readonly inodes: InodeTable,
    private readonly entries: Entries,
  ) {}

  /** Every handle is gone (DESTROY, or a new INIT): none keeps records. */
  reset(): void {
    this.pendingDirents = 0;
  }

  /** A handle released: the records its stream kept no longer count. */
  released(h: Handle): void {
    if (h.stream?.pending) this.pendingDirents -= h.stream.pending.length;
  }

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
            entry = this.entries.lookup(h.inode, name);
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
        if (next < 0 && entry.nodeid !== 0) this.inodes.forget(entry.nodeid, 1);
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
}
