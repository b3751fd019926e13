import {
  Op, opName, Init, FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, FUSE_MIN_MINOR_VERSION, FUSE_MAX_WRITE,
  FUSE_GETATTR_FH, FUSE_OPEN_KILL_SUIDGID, FUSE_WRITE_KILL_SUIDGID, Fattr, FuseProtocolError,
  InHeader, OutHeader, EntryOut, AttrOut, ForgetIn, ForgetOne, BatchForgetIn, GetattrIn, MknodIn, MkdirIn,
  RenameIn, Rename2In, LinkIn, SetattrIn, OpenIn, CreateIn, OpenOut, ReleaseIn, FlushIn, ReadIn, WriteIn, WriteOut,
  Kstatfs, FsyncIn, InterruptIn, FUSE_RELEASE_FLOCK_UNLOCK, SetxattrIn, SetxattrExtIn, FUSE_SETXATTR_ACL_KILL_SGID, GetxattrIn, GetxattrOut, LkIn, LkOut, AccessIn, InitIn, InitOut, FallocateIn,
  LseekIn, LseekOut, ReaddirIn, CopyFileRangeIn, IN_HEADER_SIZE, OUT_HEADER_SIZE, decodeSecctx, decodeSuppGroup, type SecurityContext,
  FUSE_LK_FLOCK,
} from '../../protocol/fuse/index.js';
import { IoVecList, O_NONBLOCK } from '../../protocol/sys/fd.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { writeToChain } from '../../protocol/virtqueue/chain.js';
import { SysError } from '../../protocol/sys/libc.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { E, FsError } from './errors.js';
import { F_WRLCK } from '../../protocol/sys/fs.js';
import { closesCycle } from './lock-deadlock.js';
import type { FuseIo } from './fuse-io.js';
import type { IoOffload } from './io-offload.js';
import type { LockWaits } from './lock-waits.js';
import { DEFERRED, type Deferrer } from './deferred.js';
import type { Inode } from './inodes.js';
import type { VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { appends, FastPath, NOT_HANDLED } from './fast-path.js';
import { FuseSession } from './session.js';
import type { Caller } from './credentials.js';
import type { PassthroughFs } from './passthrough.js';

const log = logger('virtiofsd');
/** Warnings about what a guest sent: rate-limited (see WarnLimiter). */
const guestWarn = new WarnLimiter(log);
/** A guest sends INIT as often as it likes (a hostile kernel in a loop): what each says is rate-limited apart from guestWarn. */
const initLog = new WarnLimiter(log);
/** Largest non-WRITE request we accept: header + setxattr_in + name + 64 KiB value, with room to spare. */
const MAX_REQUEST = 80 * 1024;
/** iovecs one READ/WRITE may span (a 1 MiB request in 4 KiB guest pages needs 256). */
export const MAX_IOV = 1024;
const WRITE_ARGS = IN_HEADER_SIZE + WriteIn.size;
const SYMLINK_MAX = 4096;
export interface ServerStats {
  requests: number;
  errors: number;
  dropped: number;
  /** Requests that hit an unexpected exception (a bug, answered with EIO). */
  internal: number;
}

/**
 * Frames FUSE requests: decodes the header and arguments of one request, runs it on the
 * passthrough filesystem and writes the reply. Returns the reply length (0: no reply, e.g. FORGET).
 */
export class FuseServer {
  private readonly inBuf = Buffer.alloc(MAX_REQUEST);
  private readonly outBuf = Buffer.alloc(OUT_HEADER_SIZE + 256 * 1024);
  private readonly iov = new IoVecList(MAX_IOV);
  private readonly session: FuseSession;
  readonly stats: ServerStats = { requests: 0, errors: 0, dropped: 0, internal: 0 };

  private readonly head = this.inBuf.subarray(0, IN_HEADER_SIZE);
  private readonly fast: FastPath;

  /** Who took the request that handle() last answered DEFERRED. */
  private deferredTo: Deferrer | null = null;

  /**
   * `offload`: large READs may be finished later; `waits`: blocking locks held elsewhere are waited for. Either
   * makes handle() answer DEFERRED, and the queue loop then hands the chain to bindDeferred().
   */
  constructor(
    private readonly fs: PassthroughFs,
    private readonly offload: IoOffload | null = null,
    private readonly waits: LockWaits | null = null,
  ) {
    this.session = new FuseSession(fs.opts);
    this.fast = new FastPath(fs, this.session, this.inBuf, this.outBuf, this.iov, offload);
  }

  handle(io: FuseIo): number {
    const n = this.serve(io);
    this.fs.trimInodeFds();
    return n;
  }

  private serve(io: FuseIo): number {
    this.stats.requests++;
    if (io.inLength < IN_HEADER_SIZE) return this.drop('request shorter than fuse_in_header', io.inLength);
    const head = this.head;
    io.readIn(0, head);
    if (this.session.initialized && io.outLength >= OUT_HEADER_SIZE) {
      const len = head.readUInt32LE(0);
      if (len >= IN_HEADER_SIZE && len <= io.inLength) {
        try {
          const n = this.fast.handle(io, head.readUInt32LE(4), len);
          if (n === DEFERRED) this.deferredTo = this.offload;
          if (n !== NOT_HANDLED) return n;
        } catch (e) {
          if (e instanceof SysError || e instanceof FsError) {
            this.stats.errors++;
            return this.fast.error(io, e.errno);
          }
          if (e instanceof FuseProtocolError) return this.fast.error(io, E.EINVAL);
          this.stats.internal++;
          log.error({ err: e, op: opName(head.readUInt32LE(4)) }, 'request failed');
          return this.fast.error(io, E.EIO);
        }
      }
    }
    const h = InHeader.decode(head);
    if (io.outLength < OUT_HEADER_SIZE && !noReply(h.opcode)) return this.drop('no room for a reply', io.outLength);
    if (h.len < IN_HEADER_SIZE || h.len > io.inLength) return this.fail(io, h.unique, E.EINVAL, 'bad fuse_in_header.len', h);
    let args: Buffer;
    if (h.opcode === Op.WRITE) {
      if (h.len < WRITE_ARGS) return this.fail(io, h.unique, E.EINVAL, 'short WRITE', h);
      io.readIn(IN_HEADER_SIZE, this.inBuf.subarray(IN_HEADER_SIZE, WRITE_ARGS));
      args = this.inBuf.subarray(IN_HEADER_SIZE, WRITE_ARGS);
    } else {
      if (h.len > MAX_REQUEST) return this.fail(io, h.unique, E.EINVAL, 'request too long', h);
      io.readIn(IN_HEADER_SIZE, this.inBuf.subarray(IN_HEADER_SIZE, h.len));
      args = this.inBuf.subarray(IN_HEADER_SIZE, h.len);
    }
    try {
      return this.dispatch(io, h, args);
    } catch (e) {
      if (e instanceof SysError || e instanceof FsError) {
        this.stats.errors++;
        return this.reply(io, h.unique, -e.errno);
      }
      if (e instanceof FuseProtocolError) return this.fail(io, h.unique, E.EINVAL, e.message, h);
      this.stats.internal++;
      log.error({ err: e, op: opName(h.opcode) }, 'request failed');
      return this.reply(io, h.unique, -E.EIO);
    }
  }

  /** The chain of the request handle() just answered DEFERRED. */
  bindDeferred(owner: VringHandle, head: number): void {
    (this.deferredTo as Deferrer).bind(owner, head);
    this.deferredTo = null;
  }

  private drop(why: string, len: number): number {
    this.stats.dropped++;
    guestWarn.warn({ len }, `dropping request: ${why}`);
    return 0;
  }

  private fail(io: FuseIo, unique: bigint, errno: number, why: string, h: InHeader): number {
    this.stats.errors++;
    guestWarn.warn({ op: opName(h.opcode), len: h.len, nodeid: h.nodeid }, why);
    return this.reply(io, unique, -errno);
  }

  /** Writes header (+ body already encoded at outBuf[16..16+bodyLen)). */
  private reply(io: FuseIo, unique: bigint, error: number, bodyLen = 0): number {
    const len = OUT_HEADER_SIZE + (error === 0 ? bodyLen : 0);
    if (len > io.outLength) {
      // Not even an error header fits (a FORGET-like chain with a damaged header): nothing can be said.
      if (io.outLength < OUT_HEADER_SIZE) return this.drop('no room for a reply', io.outLength);
      guestWarn.warn({ need: len, have: io.outLength }, 'reply does not fit the writable buffers');
      return this.reply(io, unique, -E.EINVAL);
    }
    OutHeader.encode({ len, error, unique }, this.outBuf, 0);
    io.writeOut(0, this.outBuf.subarray(0, len));
    return len;
  }

  private replyStruct<V>(io: FuseIo, unique: bigint, s: { encode(v: V, b: Uint8Array, o: number): number; size: number }, v: V): number {
    s.encode(v, this.outBuf, OUT_HEADER_SIZE);
    return this.reply(io, unique, 0, s.size);
  }

  private replyBytes(io: FuseIo, unique: bigint, b: Uint8Array): number {
    this.outBuf.set(b, OUT_HEADER_SIZE);
    return this.reply(io, unique, 0, b.length);
  }

  private dispatch(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const u = h.unique;
    if (h.opcode === Op.INIT) return this.init(io, u, a);
    if (!this.session.initialized) {
      if (noReply(h.opcode)) return 0;
      return this.reply(io, u, -E.EIO);
    }
    const caller: Caller = { uid: h.uid, gid: h.gid, pid: h.pid };
    switch (h.opcode) {
      case Op.LOOKUP:
        return this.replyStruct(io, u, EntryOut, fs.lookup(fs.inode(h.nodeid), cstring(a, 0).name));
      case Op.FORGET:
        fs.forget(h.nodeid, ForgetIn.decode(a).nlookup);
        return 0;
      case Op.BATCH_FORGET: {
        const { count } = BatchForgetIn.decode(a);
        // A count its body does not hold is a malformed request: dropped whole, as virtiofsd and QEMU's do.
        if (count > Math.floor((a.length - BatchForgetIn.size) / ForgetOne.size)) return this.drop('BATCH_FORGET count beyond its entries', a.length);
        for (let k = 0; k < count; k++) {
          const f = ForgetOne.decode(a, BatchForgetIn.size + k * ForgetOne.size);
          fs.forget(f.nodeid, f.nlookup);
        }
        return 0;
      }
      case Op.GETATTR: {
        const g = GetattrIn.decode(a);
        const r = fs.getattr(fs.inode(h.nodeid), g.getattrFlags & FUSE_GETATTR_FH ? g.fh : undefined);
        return this.replyStruct(io, u, AttrOut, { attrValid: r.valid, attrValidNsec: r.validNsec, attr: r.attr });
      }
      case Op.SETATTR: {
        const sa = SetattrIn.decode(a);
        const r = fs.setattr(fs.inode(h.nodeid), sa, this.session.kill((sa.valid & Fattr.KILL_SUIDGID) !== 0));
        return this.replyStruct(io, u, AttrOut, { attrValid: r.valid, attrValidNsec: r.validNsec, attr: r.attr });
      }
      case Op.READLINK:
        return this.replyBytes(io, u, fs.readlink(fs.inode(h.nodeid)));
      case Op.SYMLINK: {
        const name = cstring(a, 0);
        const target = cstring(a, name.next);
        if (target.name.length >= SYMLINK_MAX) throw new FsError(36, 'symlink target too long');
        return this.replyStruct(io, u, EntryOut, fs.symlink(this.creator(caller, h, a), fs.inode(h.nodeid), name.name, target.name, this.label(h, a, target.next)));
      }
      case Op.MKNOD: {
        const m = MknodIn.decode(a);
        const name = cstring(a, MknodIn.size);
        return this.replyStruct(io, u, EntryOut, fs.mknod(this.creator(caller, h, a), fs.inode(h.nodeid), name.name, m.mode, m.rdev, this.session.umask(m.umask), this.label(h, a, name.next)));
      }
      case Op.MKDIR: {
        const m = MkdirIn.decode(a);
        const name = cstring(a, MkdirIn.size);
        return this.replyStruct(io, u, EntryOut, fs.mkdir(this.creator(caller, h, a), fs.inode(h.nodeid), name.name, m.mode, this.session.umask(m.umask), this.label(h, a, name.next)));
      }
      case Op.UNLINK:
      case Op.RMDIR:
        fs.unlink(fs.inode(h.nodeid), cstring(a, 0).name, h.opcode === Op.RMDIR);
        return this.reply(io, u, 0);
      case Op.RENAME:
      case Op.RENAME2: {
        const two = h.opcode === Op.RENAME2;
        const r = two ? Rename2In.decode(a) : { ...RenameIn.decode(a), flags: 0 };
        const oldName = cstring(a, two ? Rename2In.size : RenameIn.size);
        const newName = cstring(a, oldName.next);
        fs.rename(fs.inode(h.nodeid), oldName.name, fs.inode(r.newdir), newName.name, r.flags);
        return this.reply(io, u, 0);
      }
      case Op.LINK: {
        const l = LinkIn.decode(a);
        return this.replyStruct(io, u, EntryOut, fs.link(fs.inode(l.oldnodeid), fs.inode(h.nodeid), cstring(a, LinkIn.size).name));
      }
      case Op.OPEN:
        return this.open(io, u, h.nodeid, OpenIn.decode(a));
      case Op.CREATE:
        return this.create(io, u, caller, h, a);
      case Op.READ:
        return this.read(io, u, a);
      case Op.WRITE:
        return this.write(io, h, a);
      case Op.STATFS:
        return this.replyStruct(io, u, Kstatfs, fs.statfs(fs.inode(h.nodeid)));
      case Op.RELEASE:
      case Op.RELEASEDIR: {
        const r = ReleaseIn.decode(a);
        fs.release(r.fh, (r.releaseFlags & FUSE_RELEASE_FLOCK_UNLOCK) !== 0);
        return this.reply(io, u, 0);
      }
      case Op.FLUSH: {
        const f = FlushIn.decode(a);
        fs.flush(f.fh, f.lockOwner);
        return this.reply(io, u, 0);
      }
      case Op.FSYNC:
      case Op.FSYNCDIR: {
        const f = FsyncIn.decode(a);
        const i = fs.inode(h.nodeid);
        const datasync = (f.fsyncFlags & 1) !== 0;
        const off = this.offload;
        const gpa = off !== null && off.canSync() && !fs.syncsAtOnce(i) ? io.outHeaderGpa() : -1;
        const fd = gpa >= 0 ? fs.syncFd(f.fh) : -1;
        if (fd >= 0) {
          (off as IoOffload).submitFsync(fd, datasync, gpa, this.head.readUInt32LE(8), this.head.readUInt32LE(12));
          this.deferredTo = off;
          return DEFERRED;
        }
        fs.fsync(f.fh, datasync);
        return this.reply(io, u, 0);
      }
      case Op.SETXATTR: {
        const s = this.session.setxattrExt ? SetxattrExtIn.decode(a) : { ...SetxattrIn.decode(a), setxattrFlags: 0 };
        const name = cstring(a, this.session.setxattrExt ? SetxattrExtIn.size : SetxattrIn.size);
        if (name.next + s.size > a.length) throw new FuseProtocolError('setxattr value overruns request', { size: s.size });
        const killSgid = (s.setxattrFlags & FUSE_SETXATTR_ACL_KILL_SGID) !== 0;
        fs.setxattr(fs.inode(h.nodeid), name.name, a.subarray(name.next, name.next + s.size), s.flags, killSgid);
        return this.reply(io, u, 0);
      }
      case Op.GETXATTR:
      case Op.LISTXATTR: {
        const g = GetxattrIn.decode(a);
        const i = fs.inode(h.nodeid);
        const r = h.opcode === Op.GETXATTR ? fs.getxattr(i, cstring(a, GetxattrIn.size).name, g.size) : fs.listxattr(i, g.size);
        if (typeof r === 'number') return this.replyStruct(io, u, GetxattrOut, { size: r });
        return this.replyBytes(io, u, r);
      }
      case Op.REMOVEXATTR:
        fs.removexattr(fs.inode(h.nodeid), cstring(a, 0).name);
        return this.reply(io, u, 0);
      case Op.OPENDIR: {
        const fh = fs.opendir(fs.inode(h.nodeid));
        return this.replyStruct(io, u, OpenOut, { fh, openFlags: this.session.fopenFlags(true) });
      }
      case Op.READDIR:
      case Op.READDIRPLUS: {
        const r = ReaddirIn.decode(a);
        const size = Math.min(r.size, io.outLength - OUT_HEADER_SIZE, this.outBuf.length - OUT_HEADER_SIZE);
        const n = fs.readdir(r.fh, r.offset, this.outBuf.subarray(OUT_HEADER_SIZE, OUT_HEADER_SIZE + size), h.opcode === Op.READDIRPLUS);
        return this.reply(io, u, 0, n);
      }
      case Op.GETLK: {
        const l = LkIn.decode(a);
        return this.replyStruct(io, u, LkOut, { lk: fs.getlk(fs.inode(h.nodeid), l.owner, l.lk, l.lkFlags) });
      }
      case Op.SETLK:
        this.setlk(LkIn.decode(a), fs.inode(h.nodeid));
        return this.reply(io, u, 0);
      case Op.SETLKW:
        return this.setlkw(io, u, LkIn.decode(a), fs.inode(h.nodeid));
      case Op.ACCESS:
        fs.access(caller, fs.inode(h.nodeid), AccessIn.decode(a).mask);
        return this.reply(io, u, 0);
      case Op.INTERRUPT: {
        // Only a waiting lock can be interrupted: every other request ran to completion when it was read. One
        // for a request not read yet is kept for it.
        const target = InterruptIn.decode(a).unique;
        this.waits?.interrupt(Number(target & 0xffff_ffffn), Number(target >> 32n));
        return 0;
      }
      case Op.DESTROY:
        this.waits?.forgetEarlyInterrupts();
        fs.destroy();
        this.session.initialized = false;
        return this.reply(io, u, 0);
      case Op.FALLOCATE: {
        const f = FallocateIn.decode(a);
        fs.fallocate(f.fh, f.mode, f.offset, f.length);
        return this.reply(io, u, 0);
      }
      case Op.LSEEK: {
        const l = LseekIn.decode(a);
        return this.replyStruct(io, u, LseekOut, { offset: fs.lseek(l.fh, l.offset, l.whence) });
      }
      case Op.COPY_FILE_RANGE: {
        const c = CopyFileRangeIn.decode(a);
        if (c.flags !== 0n) throw new FsError(E.EINVAL, 'copy_file_range flags');
        const n = fs.copyFileRange(c.fhIn, c.offIn, c.fhOut, c.offOut, typeof c.len === 'bigint' ? 0x7ffff000 : Math.min(c.len, 0x7ffff000), 0);
        return this.replyStruct(io, u, WriteOut, { size: n });
      }
      case Op.SYNCFS:
        fs.syncfs(fs.inode(h.nodeid));
        return this.reply(io, u, 0);
      default:
        if (noReply(h.opcode)) return 0;
        return this.reply(io, u, -E.ENOSYS);
    }
  }

  private init(io: FuseIo, u: bigint, a: Buffer): number {
    this.waits?.forgetEarlyInterrupts();
    if (a.length < 8) throw new FuseProtocolError('short INIT', { len: a.length });
    const padded = Buffer.alloc(InitIn.size);
    a.copy(padded, 0, 0, Math.min(a.length, InitIn.size));
    const i = InitIn.decode(padded);
    // A 7.x kernel sends major, minor, max_readahead and flags (16 bytes) at least, and the whole fuse_init_in with
    // INIT_EXT: a shorter body would have the missing fields read as zeroes.
    const ext = (BigInt(i.flags) & Init.INIT_EXT) !== 0n;
    const whole = a.length >= (ext ? InitIn.size : 16);
    if (this.session.initialized && i.major === FUSE_KERNEL_VERSION && whole) {
      // A guest that rebooted without unmounting (a crash, reboot -f, kexec) sends no DESTROY: what its previous
      // kernel looked up and opened is nobody's now, and would hold fds and locks until the guest fd limit is
      // reached. Dropped even when this INIT is refused (an older kernel's minor), as QEMU's virtiofsd drops it; a
      // garbled INIT (short, not 7.x) is refused and leaves the session as it was.
      initLog.info({ inodes: this.fs.inodes.size - 1, handles: this.fs.handles.size }, 'INIT without DESTROY: dropping the previous session');
      this.fs.destroy();
      this.session.initialized = false;
    }
    if (i.major < FUSE_KERNEL_VERSION || (i.major === FUSE_KERNEL_VERSION && i.minor < FUSE_MIN_MINOR_VERSION)) {
      initLog.error({ major: i.major, minor: i.minor }, 'unsupported FUSE version');
      return this.reply(io, u, -E.EPROTO);
    }
    const zero = { maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, mapAlignment: 0, flags2: 0 };
    if (i.major > FUSE_KERNEL_VERSION) {
      // Newer kernel: answer with our version only; it retries INIT with 7.x.
      return this.replyStruct(io, u, InitOut, { major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, ...zero });
    }
    if (!whole) throw new FuseProtocolError('short INIT', { len: a.length, initExt: ext });
    const offered = BigInt(i.flags) | (ext ? BigInt(i.flags2) << 32n : 0n);
    const flags = this.session.negotiate(offered);
    this.fs.submountsNegotiated = (flags & Init.SUBMOUNTS) !== 0n;
    this.fs.writebackNegotiated = (flags & Init.WRITEBACK_CACHE) !== 0n;
    this.fs.aclsNegotiated = (flags & Init.POSIX_ACL) !== 0n;
    this.fs.suppGroupsNegotiated = (flags & Init.CREATE_SUPP_GROUP) !== 0n;
    initLog.info({ minor: i.minor, flags: `0x${flags.toString(16)}` }, 'FUSE session initialised');
    return this.replyStruct(io, u, InitOut, {
      major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, maxReadahead: i.maxReadahead,
      flags: Number(flags & 0xffffffffn), maxBackground: 0xffff, congestionThreshold: 0xbfff, maxWrite: FUSE_MAX_WRITE,
      timeGran: 1, maxPages: FUSE_MAX_WRITE / 4096, mapAlignment: 0, flags2: Number(flags >> 32n),
    });
  }

  /** The caller of a creation, with the supplementary group its request extension carries (FUSE_CREATE_SUPP_GROUP). */
  private creator(c: Caller, h: InHeader, a: Buffer): Caller {
    if (this.session.createSuppGroup && h.totalExtlen > 0) c.suppGid = decodeSuppGroup(a, h.totalExtlen);
    return c;
  }

  /** The label a creation carries (FUSE_SECURITY_CTX, negotiated under --security-label) after its names at `after`. */
  private label(h: InHeader, a: Buffer, after: number): SecurityContext | null {
    return this.session.securityCtx ? decodeSecctx(a, after, h.totalExtlen) : null;
  }

  private setlk(l: LkIn, i: Inode): void {
    this.fs.setlk(i, l.fh, l.owner, l.lk, l.lkFlags);
  }

  /**
   * SETLKW: a free lock is taken at once; one held elsewhere is waited for in LockWaits while other requests
   * go on. Without LockWaits, or with no single guest buffer for the reply header, the answer is ENOLCK.
   */
  private setlkw(io: FuseIo, u: bigint, l: LkIn, i: Inode): number {
    const attempt = (): number => {
      try {
        this.setlk(l, i);
        return 0;
      } catch (e) {
        if (e instanceof SysError || e instanceof FsError) return -e.errno;
        log.error({ err: e }, 'lock attempt failed');
        return -E.EIO;
      }
    };
    const r = attempt();
    if (r !== -E.EAGAIN) return this.reply(io, u, r);
    const gpa = io.outHeaderGpa();
    const [lo, hi] = uniqueHalves(u);
    if (this.waits?.interrupted(lo, hi)) return this.reply(io, u, -E.EINTR);
    const waits = this.waits;
    const want = (l.lkFlags & FUSE_LK_FLOCK) === 0 ? { inode: i, owner: l.owner, write: l.lk.type === F_WRLCK, start: l.lk.start, end: l.lk.end } : null;
    // As a local file system: the request that would close a cycle of waiting owners is answered EDEADLK.
    if (waits !== null && want !== null && closesCycle(want, (w) => this.fs.lockBlockers(w), (o) => waits.wanting(o))) {
      return this.reply(io, u, -E.EDEADLK);
    }
    if (waits === null || gpa < 0 || !waits.park(attempt, gpa, lo, hi, want)) {
      return this.reply(io, u, -E.ENOLCK);
    }
    this.deferredTo = this.waits;
    return DEFERRED;
  }

  /**
   * OPEN. One that must break a host process's lease on the file (Samba, knfsd, a tool) waits in LockWaits, as the
   * kernel would make the opener wait, while other requests go on; a guest open with O_NONBLOCK gets EAGAIN as it
   * would locally. Without LockWaits, or with no single guest buffer for the reply header, it blocks as open(2) does.
   */
  private open(io: FuseIo, u: bigint, nodeid: number, o: { flags: number; openFlags: number }): number {
    const fs = this.fs;
    const i = fs.inode(nodeid);
    const kill = this.session.kill((o.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0);
    const openFlags = this.session.fopenFlags(false);
    // The guest may have forgotten the inode while the open waited (a hostile one): its fd is gone with it.
    return this.openBreakingLease(io, u, o.flags, OpenOut.size, () => fs.inodes.tryGet(nodeid) === i, (leaseAgain, out, at) => {
      const fh = fs.open(i, o.flags, kill, leaseAgain);
      OpenOut.encode({ fh, openFlags }, out, at);
      return () => fs.release(fh);
    });
  }

  /**
   * CREATE. Of an existing file, it opens the file as OPEN does, and so waits the same way for a host process to give
   * up its lease on it (a guest `echo > f` once the dentry expired).
   */
  private create(io: FuseIo, u: bigint, caller: Caller, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const c = CreateIn.decode(a);
    const kill = this.session.kill((c.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0);
    const cname = cstring(a, CreateIn.size);
    const label = this.label(h, a, cname.next);
    const creator = this.creator(caller, h, a);
    const nodeid = h.nodeid;
    const parent = fs.inode(nodeid);
    const umask = this.session.umask(c.umask);
    const openFlags = this.session.fopenFlags(false);
    // Copies (Buffer's slice() would not be one): `a` is the request buffer, reused once this request's turn ends.
    const name = Uint8Array.from(cname.name);
    const ctx = label === null ? null : { name: Uint8Array.from(label.name), value: Uint8Array.from(label.value) };
    return this.openBreakingLease(io, u, c.flags, EntryOut.size + OpenOut.size, () => fs.inodes.tryGet(nodeid) === parent, (leaseAgain, out, at) => {
      const r = fs.create(creator, parent, name, c.flags, c.mode, umask, kill, ctx, leaseAgain);
      EntryOut.encode(r.entry, out, at);
      OpenOut.encode({ fh: r.fh, openFlags }, out, at + EntryOut.size);
      return () => {
        fs.release(r.fh);
        fs.forget(r.entry.nodeid, 1);
      };
    });
  }

  /**
   * Runs an open that may have to break a host lease: `openOnce` opens (EAGAIN at once for a lease when `leaseAgain`),
   * writes its reply body of `bodySize` bytes at `at` in `out` and returns how to undo the open. On EAGAIN the request
   * is parked in LockWaits and tried again until it gets through (`stillValid`: its inodes are still the guest's).
   */
  private openBreakingLease(
    io: FuseIo, u: bigint, guestFlags: number, bodySize: number, stillValid: () => boolean,
    openOnce: (leaseAgain: boolean, out: Uint8Array, at: number) => () => void,
  ): number {
    const waits = this.waits;
    const gpa = io.outHeaderGpa();
    const canWait = waits !== null && gpa >= 0 && io.outLength >= OUT_HEADER_SIZE + bodySize && (guestFlags & O_NONBLOCK) === 0;
    try {
      openOnce(canWait, this.outBuf, OUT_HEADER_SIZE);
      return this.reply(io, u, 0, bodySize);
    } catch (e) {
      if (!canWait || !(e instanceof SysError || e instanceof FsError) || e.errno !== E.EAGAIN) throw e;
    }
    const [lo, hi] = uniqueHalves(u);
    if (waits.interrupted(lo, hi)) return this.reply(io, u, -E.EINTR);
    // The reply body is written when the open gets through, into the buffers this chain has now (copied: reused).
    const segs = io.outSegments() ?? [];
    const body = new Uint8Array(bodySize);
    const attempt = (mem: GuestMemory): number => {
      if (!stillValid()) return -E.EBADF;
      let undo: () => void;
      try {
        undo = openOnce(true, body, 0);
      } catch (e) {
        if (e instanceof SysError || e instanceof FsError) return -e.errno;
        log.error({ err: e }, 'open attempt failed');
        return -E.EIO;
      }
      try {
        if (writeToChain(mem, segs, OUT_HEADER_SIZE, body) === body.length) return body.length;
      } catch {
        // the reply space stopped being guest memory
      }
      undo();
      return -E.EIO;
    };
    if (!waits.park(attempt, gpa, lo, hi)) {
      openOnce(false, this.outBuf, OUT_HEADER_SIZE);
      return this.reply(io, u, 0, bodySize);
    }
    this.deferredTo = waits;
    return DEFERRED;
  }

  private read(io: FuseIo, u: bigint, a: Buffer): number {
    const r = ReadIn.decode(a);
    const size = Math.min(r.size, io.outLength - OUT_HEADER_SIZE);
    const iov = this.iov;
    iov.clear();
    const covered = io.outIovecs(OUT_HEADER_SIZE, size, iov);
    const n = covered > 0 ? this.fs.read(r.fh, r.offset, iov) : 0;
    OutHeader.encode({ len: OUT_HEADER_SIZE + n, error: 0, unique: u }, this.outBuf, 0);
    io.writeOut(0, this.outBuf.subarray(0, OUT_HEADER_SIZE));
    return OUT_HEADER_SIZE + n;
  }

  private write(io: FuseIo, h: InHeader, a: Buffer): number {
    const w = WriteIn.decode(a);
    if (w.size > FUSE_MAX_WRITE || WRITE_ARGS + w.size > h.len) {
      throw new FuseProtocolError('WRITE size overruns request', { size: w.size, len: h.len });
    }
    const iov = this.iov;
    iov.clear();
    const covered = io.inIovecs(WRITE_ARGS, w.size, iov);
    if (covered !== w.size) throw new FuseProtocolError('WRITE data too fragmented', { size: w.size, covered });
    const n = this.fs.write(w.fh, w.offset, iov, this.session.kill((w.writeFlags & FUSE_WRITE_KILL_SUIDGID) !== 0, true), appends(w.writeFlags, w.flags));
    return this.replyStruct(io, h.unique, WriteOut, { size: n });
  }
}

/** A request's unique as the two u32 halves parked requests keep (lo, hi). */
function uniqueHalves(u: bigint): [number, number] {
  return [Number(u & 0xffff_ffffn), Number(u >> 32n)];
}

function noReply(op: number): boolean {
  return op === Op.FORGET || op === Op.BATCH_FORGET || op === Op.INTERRUPT;
}

/** A NUL-terminated name at a[off]; `next` is the offset after the NUL. */
function cstring(a: Uint8Array, off: number): { name: Uint8Array; next: number } {
  const end = a.indexOf(0, off);
  if (off > a.length || end < 0) throw new FuseProtocolError('unterminated name', { off });
  return { name: a.subarray(off, end), next: end + 1 };
}
