import { Op, opName, FuseProtocolError, InHeader, OpenIn, IN_HEADER_SIZE, OUT_HEADER_SIZE } from '../../protocol/fuse/index.js';
import { IoVecList } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { logger } from '../../protocol/log.js';
import type { VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { AttrRequests } from './attr-requests.js';
import { DEFERRED, type Deferrer } from './deferred.js';
import { EntryRequests } from './entry-requests.js';
import { E, FsError } from './errors.js';
import { FastPath, NOT_HANDLED } from './fast-path.js';
import { FileRequests, WRITE_ARGS } from './file-requests.js';
import type { FuseIo } from './fuse-io.js';
import type { IoOffload } from './io-offload.js';
import { LockRequests } from './lock-requests.js';
import type { LockWaits } from './lock-waits.js';
import { OpenRequests } from './open-requests.js';
import type { PassthroughFs } from './passthrough.js';
import { Replies, type ServerStats } from './replies.js';
import { FuseSession } from './session.js';
import { SessionRequests } from './session-requests.js';

export type { ServerStats } from './replies.js';

const log = logger('virtiofsd');
/** Largest non-WRITE request we accept: header + setxattr_in + name + 64 KiB value, with room to spare. */
const MAX_REQUEST = 80 * 1024;
/** iovecs one READ/WRITE may span (a 1 MiB request in 4 KiB guest pages needs 256). */
export const MAX_IOV = 1024;

/**
 * Frames FUSE requests: decodes the header and arguments of one request, runs it on the
 * passthrough filesystem and writes the reply. Returns the reply length (0: no reply, e.g. FORGET).
 *
 * The common requests go through FastPath (fast-path.ts); the rest, and whatever it leaves, are decoded here and
 * run by group: INIT, DESTROY and INTERRUPT (session-requests.ts), entries (entry-requests.ts), attributes and
 * xattrs (attr-requests.ts), open files and directories (file-requests.ts), OPEN and CREATE waiting on a host
 * lease (open-requests.ts), locks (lock-requests.ts); their replies are written by replies.ts.
 */
export class FuseServer {
  private readonly inBuf = Buffer.alloc(MAX_REQUEST);
  private readonly outBuf = Buffer.alloc(OUT_HEADER_SIZE + 256 * 1024);
  private readonly iov = new IoVecList(MAX_IOV);
  private readonly session: FuseSession;
  readonly stats: ServerStats = { requests: 0, errors: 0, dropped: 0, internal: 0 };

  private readonly head = this.inBuf.subarray(0, IN_HEADER_SIZE);
  private readonly fast: FastPath;
  private readonly replies: Replies;
  private readonly sessionReqs: SessionRequests;
  private readonly entries: EntryRequests;
  private readonly attrs: AttrRequests;
  private readonly files: FileRequests;
  private readonly opens: OpenRequests;
  private readonly locks: LockRequests;

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
    const replies = new Replies(this.outBuf, this.stats);
    this.replies = replies;
    this.sessionReqs = new SessionRequests(fs, this.session, replies, waits);
    this.entries = new EntryRequests(fs, this.session, replies);
    this.attrs = new AttrRequests(fs, this.session, replies);
    this.files = new FileRequests(fs, this.session, replies, this.head, this.iov, offload);
    this.opens = new OpenRequests(fs, this.session, replies, waits);
    this.locks = new LockRequests(fs, replies, waits);
  }

  handle(io: FuseIo): number {
    const n = this.serve(io);
    this.fs.trimInodeFds();
    return n;
  }

  private serve(io: FuseIo): number {
    this.stats.requests++;
    if (io.inLength < IN_HEADER_SIZE) return this.replies.drop('request shorter than fuse_in_header', io.inLength);
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
    if (io.outLength < OUT_HEADER_SIZE && !noReply(h.opcode)) return this.replies.drop('no room for a reply', io.outLength);
    if (h.len < IN_HEADER_SIZE || h.len > io.inLength) return this.replies.fail(io, h.unique, E.EINVAL, 'bad fuse_in_header.len', h);
    let args: Buffer;
    if (h.opcode === Op.WRITE) {
      if (h.len < WRITE_ARGS) return this.replies.fail(io, h.unique, E.EINVAL, 'short WRITE', h);
      io.readIn(IN_HEADER_SIZE, this.inBuf.subarray(IN_HEADER_SIZE, WRITE_ARGS));
      args = this.inBuf.subarray(IN_HEADER_SIZE, WRITE_ARGS);
    } else {
      if (h.len > MAX_REQUEST) return this.replies.fail(io, h.unique, E.EINVAL, 'request too long', h);
      io.readIn(IN_HEADER_SIZE, this.inBuf.subarray(IN_HEADER_SIZE, h.len));
      args = this.inBuf.subarray(IN_HEADER_SIZE, h.len);
    }
    try {
      return this.dispatch(io, h, args);
    } catch (e) {
      if (e instanceof SysError || e instanceof FsError) {
        this.stats.errors++;
        return this.replies.reply(io, h.unique, -e.errno);
      }
      if (e instanceof FuseProtocolError) return this.replies.fail(io, h.unique, E.EINVAL, e.message, h);
      this.stats.internal++;
      log.error({ err: e, op: opName(h.opcode) }, 'request failed');
      return this.replies.reply(io, h.unique, -E.EIO);
    }
  }

  /** The chain of the request handle() just answered DEFERRED. */
  bindDeferred(owner: VringHandle, head: number): void {
    (this.deferredTo as Deferrer).bind(owner, head);
    this.deferredTo = null;
  }

  private dispatch(io: FuseIo, h: InHeader, a: Buffer): number {
    const u = h.unique;
    if (h.opcode === Op.INIT) return this.sessionReqs.init(io, u, a);
    if (!this.session.initialized) {
      if (noReply(h.opcode)) return 0;
      return this.replies.reply(io, u, -E.EIO);
    }
    switch (h.opcode) {
      case Op.LOOKUP: return this.entries.lookup(io, h, a);
      case Op.FORGET: return this.entries.forget(h, a);
      case Op.BATCH_FORGET: return this.entries.batchForget(a);
      case Op.GETATTR: return this.attrs.getattr(io, h, a);
      case Op.SETATTR: return this.attrs.setattr(io, h, a);
      case Op.READLINK: return this.entries.readlink(io, h);
      case Op.SYMLINK: return this.entries.symlink(io, h, a);
      case Op.MKNOD: return this.entries.mknod(io, h, a);
      case Op.MKDIR: return this.entries.mkdir(io, h, a);
      case Op.UNLINK:
      case Op.RMDIR: return this.entries.unlink(io, h, a);
      case Op.RENAME:
      case Op.RENAME2: return this.entries.rename(io, h, a);
      case Op.LINK: return this.entries.link(io, h, a);
      case Op.OPEN: return this.deferredBy(this.waits, this.opens.open(io, u, h.nodeid, OpenIn.decode(a)));
      case Op.CREATE: return this.deferredBy(this.waits, this.opens.create(io, h, a));
      case Op.READ: return this.files.read(io, u, a);
      case Op.WRITE: return this.files.write(io, h, a);
      case Op.STATFS: return this.attrs.statfs(io, h);
      case Op.RELEASE:
      case Op.RELEASEDIR: return this.files.release(io, u, a);
      case Op.FLUSH: return this.files.flush(io, u, a);
      case Op.FSYNC:
      case Op.FSYNCDIR: return this.deferredBy(this.offload, this.files.fsync(io, h, a));
      case Op.SETXATTR: return this.attrs.setxattr(io, h, a);
      case Op.GETXATTR:
      case Op.LISTXATTR: return this.attrs.getxattr(io, h, a);
      case Op.REMOVEXATTR: return this.attrs.removexattr(io, h, a);
      case Op.OPENDIR: return this.files.opendir(io, h);
      case Op.READDIR:
      case Op.READDIRPLUS: return this.files.readdir(io, h, a);
      case Op.GETLK: return this.locks.getlk(io, h, a);
      case Op.SETLK: return this.locks.setlk(io, h, a);
      case Op.SETLKW: return this.deferredBy(this.waits, this.locks.setlkw(io, h, a));
      case Op.ACCESS: return this.attrs.access(io, h, a);
      case Op.INTERRUPT: return this.sessionReqs.interrupt(a);
      case Op.DESTROY: return this.sessionReqs.destroy(io, u);
      case Op.FALLOCATE: return this.files.fallocate(io, u, a);
      case Op.LSEEK: return this.files.lseek(io, u, a);
      case Op.COPY_FILE_RANGE: return this.files.copyFileRange(io, u, a);
      case Op.SYNCFS: return this.files.syncfs(io, h);
      default:
        if (noReply(h.opcode)) return 0;
        return this.replies.reply(io, u, -E.ENOSYS);
    }
  }

  /** `n`, noting that `d` took the request when it is DEFERRED. */
  private deferredBy(d: Deferrer | null, n: number): number {
    if (n === DEFERRED) this.deferredTo = d;
    return n;
  }
}

function noReply(op: number): boolean {
  return op === Op.FORGET || op === Op.BATCH_FORGET || op === Op.INTERRUPT;
}
