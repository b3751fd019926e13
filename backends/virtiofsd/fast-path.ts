import { Op, FUSE_GETATTR_FH, FUSE_WRITE_CACHE, FUSE_MAX_WRITE, FUSE_OPEN_KILL_SUIDGID, FUSE_RELEASE_FLOCK_UNLOCK, FUSE_WRITE_KILL_SUIDGID, IN_HEADER_SIZE, OUT_HEADER_SIZE } from '../../protocol/fuse/index.js';
import { O_APPEND, O_NONBLOCK, type IoVecList } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { fstatRaw, rawMountId, rawStat } from '../../protocol/sys/fs.js';
import { E, FsError } from './errors.js';
import type { FuseIo } from './fuse-io.js';
import type { PassthroughFs } from './passthrough.js';
import type { Inode } from './inodes.js';
import type { FuseSession } from './session.js';
import type { IoOffload } from './io-offload.js';
import { DEFERRED } from './deferred.js';

const TWO32 = 0x1_0000_0000;
const ENTRY_OUT = 128;
const ATTR_OUT = 104;
const OPEN_OUT = 16;
const WRITE_OUT = 8;
/** fuse_in_header + fuse_write_in: WRITE's arguments before its data. */
const WRITE_ARGS = IN_HEADER_SIZE + 40;
/**
 * Whether a WRITE asks for the end of the file: the guest's file has O_APPEND now (fuse_write_in.flags) and the write is
 * not its page cache writing back a page, which goes where the page is. The host fd never has O_APPEND (see openFlags);
 * PassthroughFs.write appends only without the writeback cache.
 */
export function appends(writeFlags: number, fileFlags: number): boolean {
  return (fileFlags & O_APPEND) !== 0 && (writeFlags & FUSE_WRITE_CACHE) === 0;
}

/** Returned when a request is not one of ours: the generic decoder takes it (and reports any error). */
export const NOT_HANDLED = -1;

/**
 * The requests a workload is made of (LOOKUP, GETATTR, FORGET, OPEN, READ, WRITE, FLUSH, RELEASE,
 * CREATE), decoded in place from the request buffer with one DataView and answered straight from the
 * raw struct stat: no per-request objects, no bigints, and -errno returns instead of exceptions for
 * routine failures. Anything unusual (a malformed request, a flag we do not special-case) is left to
 * the generic path in server.ts, which owns validation messages and logging.
 */
export class FastPath {
  private readonly inDv: DataView;
  private readonly outDv: DataView;
  private readonly stDv = new DataView(rawStat.buffer, rawStat.byteOffset, rawStat.byteLength);
  private readonly outHead: Buffer;
  /** outBuf[0, len) by reply length: a reply's few sizes, each cut once instead of per request. */
  private readonly outViews: Buffer[] = [];

  constructor(
    private readonly fs: PassthroughFs,
    private readonly session: FuseSession,
    private readonly inBuf: Buffer,
    private readonly outBuf: Buffer,
    private readonly iov: IoVecList,
    private readonly offload: IoOffload | null = null,
  ) {
    this.inDv = new DataView(inBuf.buffer, inBuf.byteOffset, inBuf.byteLength);
    this.outDv = new DataView(outBuf.buffer, outBuf.byteOffset, outBuf.byteLength);
    this.outHead = outBuf.subarray(0, OUT_HEADER_SIZE);
  }

  /** u64 at inBuf[o] as a number, or -1 if it is >= 2^53. */
  private u64(o: number): number {
    const hi = this.inDv.getUint32(o + 4, true);
    return hi >= 0x20_0000 ? -1 : hi * TWO32 + this.inDv.getUint32(o, true);
  }

  /**
   * Serves the request whose header is in inBuf[0..40) (len already checked against the chain);
   * returns the reply length or NOT_HANDLED. Throws (SysError/FsError) only for rare failures.
   */
  handle(io: FuseIo, opcode: number, len: number): number {
    switch (opcode) {
      case Op.LOOKUP: case Op.GETATTR: case Op.FORGET: case Op.READ: case Op.WRITE:
      case Op.RELEASE: case Op.FLUSH: case Op.OPEN: case Op.CREATE:
        break;
      default:
        return NOT_HANDLED;
    }
    const end = opcode === Op.WRITE ? WRITE_ARGS : len;
    if (end > this.inBuf.length || end > len) return NOT_HANDLED;
    if (end > IN_HEADER_SIZE) io.readIn(IN_HEADER_SIZE, this.inBuf.subarray(IN_HEADER_SIZE, end));
    const nodeid = this.u64(16);
    const fs = this.fs;
    const A = IN_HEADER_SIZE;
    switch (opcode) {
      case Op.LOOKUP: {
        const parent = fs.inodes.tryGet(nodeid);
        if (parent === undefined) return this.error(io, E.EBADF);
        const nul = this.inBuf.indexOf(0, A);
        if (nul < 0 || nul >= len) return NOT_HANDLED;
        const r = fs.lookupRaw(parent, this.inBuf.subarray(A, nul + 1));
        if (r < 0) return this.error(io, -r);
        this.putEntry(r, parent);
        return this.ok(io, ENTRY_OUT);
      }
      case Op.GETATTR: {
        if (len < A + 16) return NOT_HANDLED;
        const i = fs.inodes.tryGet(nodeid);
        if (i === undefined) return this.error(io, E.EBADF);
        let fd = i.fd;
        if (this.inDv.getUint32(A, true) & FUSE_GETATTR_FH) {
          const h = fs.handles.tryGet(this.u64(A + 8));
          if (h === undefined) return this.error(io, E.EBADF);
          fd = h.fd;
        }
        const r = fstatRaw(fd);
        if (r < 0) return this.error(io, -r);
        const d = this.outDv;
        this.put64(OUT_HEADER_SIZE, fs.timeout);
        d.setUint32(OUT_HEADER_SIZE + 8, fs.timeoutNsec, true);
        d.setUint32(OUT_HEADER_SIZE + 12, 0, true);
        this.putAttr(OUT_HEADER_SIZE + 16, null);
        return this.ok(io, ATTR_OUT);
      }
      case Op.FORGET: {
        if (len < A + 8) return NOT_HANDLED;
        const n = this.u64(A);
        if (nodeid >= 0 && n >= 0) fs.forget(nodeid, n);
        return 0;
      }
      case Op.OPEN: {
        if (len < A + 8) return NOT_HANDLED;
        const i = fs.inodes.tryGet(nodeid);
        if (i === undefined) return this.error(io, E.EBADF);
        const kill = this.session.kill((this.inDv.getUint32(A + 4, true) & FUSE_OPEN_KILL_SUIDGID) !== 0);
        const flags = this.inDv.getUint32(A, true);
        let fh: number;
        try {
          fh = fs.open(i, flags, kill, true);
        } catch (e) {
          // A host lease being broken: the generic path waits for it without holding up other requests.
          if (e instanceof SysError && e.errno === E.EAGAIN && (flags & O_NONBLOCK) === 0) return NOT_HANDLED;
          throw e;
        }
        this.put64(OUT_HEADER_SIZE, fh);
        this.outDv.setUint32(OUT_HEADER_SIZE + 8, this.session.fopenFlags(false), true);
        this.outDv.setUint32(OUT_HEADER_SIZE + 12, 0, true);
        return this.ok(io, OPEN_OUT);
      }
      case Op.CREATE: {
        // A label to set (--security-label) or request extensions (a supplementary group) take the generic path.
        if (len < A + 17 || this.session.securityCtx || this.inDv.getUint16(36, true) !== 0) return NOT_HANDLED;
        const parent = fs.inodes.tryGet(nodeid);
        if (parent === undefined) return this.error(io, E.EBADF);
        const nul = this.inBuf.indexOf(0, A + 16);
        if (nul < 0 || nul >= len) return NOT_HANDLED;
        const d = this.inDv;
        const caller = { uid: d.getUint32(24, true), gid: d.getUint32(28, true), pid: d.getUint32(32, true) };
        const umask = this.session.umask(d.getUint32(A + 8, true));
        const kill = this.session.kill((d.getUint32(A + 12, true) & FUSE_OPEN_KILL_SUIDGID) !== 0);
        const flags = d.getUint32(A, true);
        let r: { nodeid: number; fh: number };
        try {
          r = fs.createRaw(caller, parent, this.inBuf.subarray(A + 16, nul + 1), flags, d.getUint32(A + 4, true), umask, kill, true);
        } catch (e) {
          // An existing file under a host lease: as for OPEN.
          if (e instanceof FsError && e.errno === E.EAGAIN && (flags & O_NONBLOCK) === 0) return NOT_HANDLED;
          throw e;
        }
        this.putEntry(r.nodeid, parent);
        this.put64(OUT_HEADER_SIZE + ENTRY_OUT, r.fh);
        this.outDv.setUint32(OUT_HEADER_SIZE + ENTRY_OUT + 8, this.session.fopenFlags(false), true);
        this.outDv.setUint32(OUT_HEADER_SIZE + ENTRY_OUT + 12, 0, true);
        return this.ok(io, ENTRY_OUT + OPEN_OUT);
      }
      case Op.READ: {
        if (len < A + 24) return NOT_HANDLED;
        const fh = this.u64(A);
        const off = this.u64(A + 8);
        if (off < 0) return NOT_HANDLED;
        const h = fs.handles.tryGet(fh);
        if (h === undefined) return this.error(io, E.EBADF);
        const size = Math.min(this.inDv.getUint32(A + 16, true), io.outLength - OUT_HEADER_SIZE);
        const iov = this.iov;
        iov.clear();
        const covered = size > 0 ? io.outIovecs(OUT_HEADER_SIZE, size, iov) : 0;
        const offload = this.offload;
        if (offload !== null && h.readsShort !== true) {
          if (offload.wantsSplit(covered, off)) {
            const n = offload.readSplit(h.fd, iov, off);
            return n < 0 ? this.error(io, -n) : this.okWithData(io, n);
          }
          const gpa = offload.wants(covered) ? io.outHeaderGpa() : -1;
          if (gpa >= 0 && offload.submit(h.fd, iov, off, gpa, this.inDv.getUint32(8, true), this.inDv.getUint32(12, true))) return DEFERRED;
        }
        const n = covered > 0 ? fs.read(fh, off, iov) : 0;
        return this.okWithData(io, n);
      }
      case Op.WRITE: {
        const fh = this.u64(A);
        const off = this.u64(A + 8);
        const size = this.inDv.getUint32(A + 16, true);
        if (off < 0 || size > FUSE_MAX_WRITE || WRITE_ARGS + size > len) return NOT_HANDLED;
        if (fs.handles.tryGet(fh) === undefined) return this.error(io, E.EBADF);
        const iov = this.iov;
        iov.clear();
        const covered = io.inIovecs(WRITE_ARGS, size, iov);
        if (covered !== size) return NOT_HANDLED;
        const writeFlags = this.inDv.getUint32(A + 20, true);
        const kill = this.session.kill((writeFlags & FUSE_WRITE_KILL_SUIDGID) !== 0, true);
        // Zero bytes too: the host still checks the handle's mode and the offset (EBADF, EINVAL).
        const n = fs.write(fh, off, iov, kill, appends(writeFlags, this.inDv.getUint32(A + 32, true)));
        this.outDv.setUint32(OUT_HEADER_SIZE, n, true);
        this.outDv.setUint32(OUT_HEADER_SIZE + 4, 0, true);
        return this.ok(io, WRITE_OUT);
      }
      case Op.RELEASE:
      case Op.FLUSH: {
        if (len < A + 24) return NOT_HANDLED;
        const fh = this.u64(A);
        if (fs.handles.tryGet(fh) === undefined) return this.error(io, E.EBADF);
        if (opcode === Op.RELEASE) fs.release(fh, (this.inDv.getUint32(A + 12, true) & FUSE_RELEASE_FLOCK_UNLOCK) !== 0);
        else fs.flush(fh, this.inDv.getBigUint64(A + 16, true));
        return this.ok(io, 0);
      }
    }
    return NOT_HANDLED;
  }

  /** Out header for a reply of OUT_HEADER_SIZE + bodyLen bytes, echoing the request's unique. */
  private header(len: number, error: number): void {
    const d = this.outDv;
    const i = this.inDv;
    d.setUint32(0, len, true);
    d.setInt32(4, error, true);
    d.setUint32(8, i.getUint32(8, true), true);
    d.setUint32(12, i.getUint32(12, true), true);
  }

  error(io: FuseIo, errno: number): number {
    this.header(OUT_HEADER_SIZE, -errno);
    io.writeOut(0, this.outHead);
    return OUT_HEADER_SIZE;
  }

  private ok(io: FuseIo, bodyLen: number): number {
    const len = OUT_HEADER_SIZE + bodyLen;
    if (len > io.outLength) return this.error(io, E.EINVAL);
    this.header(len, 0);
    io.writeOut(0, (this.outViews[len] ??= this.outBuf.subarray(0, len)));
    return len;
  }

  /** READ: the data is already in guest memory (preadv into the chain); only the header is written. */
  private okWithData(io: FuseIo, n: number): number {
    this.header(OUT_HEADER_SIZE + n, 0);
    io.writeOut(0, this.outHead);
    return OUT_HEADER_SIZE + n;
  }

  private put64(o: number, v: number): void {
    this.outDv.setUint32(o, v % TWO32, true);
    this.outDv.setUint32(o + 4, Math.floor(v / TWO32), true);
  }

  private copy64(from: number, to: number): void {
    this.outDv.setUint32(to, this.stDv.getUint32(from, true), true);
    this.outDv.setUint32(to + 4, this.stDv.getUint32(from + 4, true), true);
  }

  /** fuse_entry_out for nodeid, found in `parent`, at the reply body; attributes from rawStat and rawMountId(). */
  private putEntry(nodeid: number, parent: Inode): void {
    const o = OUT_HEADER_SIZE;
    const t = this.fs.timeout;
    this.put64(o, nodeid);
    this.put64(o + 8, 0);
    this.put64(o + 16, t);
    this.put64(o + 24, t);
    this.outDv.setUint32(o + 32, this.fs.timeoutNsec, true);
    this.outDv.setUint32(o + 36, this.fs.timeoutNsec, true);
    this.putAttr(o + 40, parent);
  }

  /**
   * fuse_attr at outBuf[o] from the x86_64 struct stat in rawStat (same fields as PassthroughFs.toAttr); `parent`
   * for an entry (then rawStat came from statxRaw, and rawMountId() is the entry's mount), else null.
   */
  private putAttr(o: number, parent: Inode | null): void {
    const s = this.stDv;
    const d = this.outDv;
    this.copy64(8, o); // ino
    this.copy64(48, o + 8); // size
    this.copy64(64, o + 16); // blocks
    this.copy64(72, o + 24); // atime
    this.copy64(88, o + 32); // mtime
    this.copy64(104, o + 40); // ctime
    d.setUint32(o + 48, s.getUint32(80, true), true);
    d.setUint32(o + 52, s.getUint32(96, true), true);
    d.setUint32(o + 56, s.getUint32(112, true), true);
    const mode = s.getUint32(24, true);
    d.setUint32(o + 60, mode, true);
    d.setUint32(o + 64, s.getUint32(16, true), true); // nlink
    d.setUint32(o + 68, this.fs.guestId(s.getUint32(28, true), 'uid'), true);
    d.setUint32(o + 72, this.fs.guestId(s.getUint32(32, true), 'gid'), true);
    d.setUint32(o + 76, s.getUint32(40, true), true); // rdev
    d.setUint32(o + 80, s.getUint32(56, true), true); // blksize
    d.setUint32(o + 84, parent === null ? 0 : this.fs.submountFlag(mode, s.getUint32(4, true) * TWO32 + s.getUint32(0, true), rawMountId(), parent), true);
  }
}
