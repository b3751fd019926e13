import {
  Op, FUSE_MAX_WRITE, FUSE_RELEASE_FLOCK_UNLOCK, FUSE_WRITE_KILL_SUIDGID, FuseProtocolError, IN_HEADER_SIZE,
  OUT_HEADER_SIZE, OutHeader, OpenOut, ReleaseIn, FlushIn, FsyncIn, ReadIn, WriteIn, WriteOut, FallocateIn, LseekIn,
  LseekOut, CopyFileRangeIn, ReaddirIn, type InHeader,
} from '../../protocol/fuse/index.js';
import type { IoVecList } from '../../protocol/sys/fd.js';
import { DEFERRED } from './deferred.js';
import { E, FsError } from './errors.js';
import { appends } from './fast-path.js';
import type { FuseIo } from './fuse-io.js';
import type { IoOffload } from './io-offload.js';
import type { PassthroughFs } from './passthrough.js';
import type { Replies } from './replies.js';
import type { FuseSession } from './session.js';

/** fuse_in_header + fuse_write_in: WRITE's arguments before its data. */
export const WRITE_ARGS = IN_HEADER_SIZE + WriteIn.size;

/**
 * The generic path's requests on open files and directories: READ, WRITE, RELEASE, FLUSH, FSYNC (handed to the
 * offload's threads where it can be), FALLOCATE, LSEEK, COPY_FILE_RANGE, SYNCFS, OPENDIR and READDIR.
 */
export class FileRequests {
  constructor(
    private readonly fs: PassthroughFs,
    private readonly session: FuseSession,
    private readonly replies: Replies,
    /** The request's fuse_in_header (its unique at 8..16 is what a deferred reply echoes). */
    private readonly head: Buffer,
    private readonly iov: IoVecList,
    private readonly offload: IoOffload | null,
  ) {}

  read(io: FuseIo, u: bigint, a: Buffer): number {
    const r = ReadIn.decode(a);
    const size = Math.min(r.size, io.outLength - OUT_HEADER_SIZE);
    const iov = this.iov;
    iov.clear();
    const covered = io.outIovecs(OUT_HEADER_SIZE, size, iov);
    const n = covered > 0 ? this.fs.read(r.fh, r.offset, iov) : 0;
    const outBuf = this.replies.outBuf;
    OutHeader.encode({ len: OUT_HEADER_SIZE + n, error: 0, unique: u }, outBuf, 0);
    io.writeOut(0, outBuf.subarray(0, OUT_HEADER_SIZE));
    return OUT_HEADER_SIZE + n;
  }

  write(io: FuseIo, h: InHeader, a: Buffer): number {
    const w = WriteIn.decode(a);
    if (w.size > FUSE_MAX_WRITE || WRITE_ARGS + w.size > h.len) {
      throw new FuseProtocolError('WRITE size overruns request', { size: w.size, len: h.len });
    }
    const iov = this.iov;
    iov.clear();
    const covered = io.inIovecs(WRITE_ARGS, w.size, iov);
    if (covered !== w.size) throw new FuseProtocolError('WRITE data too fragmented', { size: w.size, covered });
    const n = this.fs.write(w.fh, w.offset, iov, this.session.kill((w.writeFlags & FUSE_WRITE_KILL_SUIDGID) !== 0, true), appends(w.writeFlags, w.flags));
    return this.replies.replyStruct(io, h.unique, WriteOut, { size: n });
  }

  /** RELEASE, or RELEASEDIR. */
  release(io: FuseIo, u: bigint, a: Buffer): number {
    const r = ReleaseIn.decode(a);
    this.fs.release(r.fh, (r.releaseFlags & FUSE_RELEASE_FLOCK_UNLOCK) !== 0);
    return this.replies.reply(io, u, 0);
  }

  flush(io: FuseIo, u: bigint, a: Buffer): number {
    const f = FlushIn.decode(a);
    this.fs.flush(f.fh, f.lockOwner);
    return this.replies.reply(io, u, 0);
  }

  /** FSYNC, or FSYNCDIR: DEFERRED when the offload took it (then the offload is the request's Deferrer). */
  fsync(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const f = FsyncIn.decode(a);
    const i = fs.inode(h.nodeid);
    const datasync = (f.fsyncFlags & 1) !== 0;
    const off = this.offload;
    const gpa = off !== null && off.canSync() && !fs.syncsAtOnce(i) ? io.outHeaderGpa() : -1;
    const fd = gpa >= 0 ? fs.syncFd(f.fh) : -1;
    if (fd >= 0) {
      (off as IoOffload).submitFsync(fd, datasync, gpa, this.head.readUInt32LE(8), this.head.readUInt32LE(12));
      return DEFERRED;
    }
    fs.fsync(f.fh, datasync);
    return this.replies.reply(io, h.unique, 0);
  }

  fallocate(io: FuseIo, u: bigint, a: Buffer): number {
    const f = FallocateIn.decode(a);
    this.fs.fallocate(f.fh, f.mode, f.offset, f.length);
    return this.replies.reply(io, u, 0);
  }

  lseek(io: FuseIo, u: bigint, a: Buffer): number {
    const l = LseekIn.decode(a);
    return this.replies.replyStruct(io, u, LseekOut, { offset: this.fs.lseek(l.fh, l.offset, l.whence) });
  }

  copyFileRange(io: FuseIo, u: bigint, a: Buffer): number {
    const c = CopyFileRangeIn.decode(a);
    if (c.flags !== 0n) throw new FsError(E.EINVAL, 'copy_file_range flags');
    const n = this.fs.copyFileRange(c.fhIn, c.offIn, c.fhOut, c.offOut, typeof c.len === 'bigint' ? 0x7ffff000 : Math.min(c.len, 0x7ffff000), 0);
    return this.replies.replyStruct(io, u, WriteOut, { size: n });
  }

  syncfs(io: FuseIo, h: InHeader): number {
    const fs = this.fs;
    fs.syncfs(fs.inode(h.nodeid));
    return this.replies.reply(io, h.unique, 0);
  }

  opendir(io: FuseIo, h: InHeader): number {
    const fs = this.fs;
    const fh = fs.opendir(fs.inode(h.nodeid));
    return this.replies.replyStruct(io, h.unique, OpenOut, { fh, openFlags: this.session.fopenFlags(true) });
  }

  /** READDIR, or READDIRPLUS. */
  readdir(io: FuseIo, h: InHeader, a: Buffer): number {
    const r = ReaddirIn.decode(a);
    const outBuf = this.replies.outBuf;
    const size = Math.min(r.size, io.outLength - OUT_HEADER_SIZE, outBuf.length - OUT_HEADER_SIZE);
    const n = this.fs.readdir(r.fh, r.offset, outBuf.subarray(OUT_HEADER_SIZE, OUT_HEADER_SIZE + size), h.opcode === Op.READDIRPLUS);
    return this.replies.reply(io, h.unique, 0, n);
  }
}
