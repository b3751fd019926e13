import { FUSE_OPEN_KILL_SUIDGID, OUT_HEADER_SIZE, CreateIn, EntryOut, OpenOut, type InHeader } from '../../protocol/fuse/index.js';
import { O_NONBLOCK } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { writeToChain } from '../../protocol/virtqueue/chain.js';
import { logger } from '../../protocol/log.js';
import { DEFERRED } from './deferred.js';
import { E, FsError } from './errors.js';
import type { FuseIo } from './fuse-io.js';
import type { LockWaits } from './lock-waits.js';
import type { PassthroughFs } from './passthrough.js';
import type { Replies } from './replies.js';
import { creatorOf, cstring, labelOf, uniqueHalves } from './request-args.js';
import type { FuseSession } from './session.js';

const log = logger('virtiofsd');

/**
 * The generic path's OPEN and CREATE, which may have to wait for a host process to give up its lease on the file:
 * such a request is parked in LockWaits (DEFERRED; then the LockWaits is the request's Deferrer).
 */
export class OpenRequests {
  constructor(
    private readonly fs: PassthroughFs,
    private readonly session: FuseSession,
    private readonly replies: Replies,
    private readonly waits: LockWaits | null,
  ) {}

  /**
   * OPEN. One that must break a host process's lease on the file (Samba, knfsd, a tool) waits in LockWaits, as the
   * kernel would make the opener wait, while other requests go on; a guest open with O_NONBLOCK gets EAGAIN as it
   * would locally. Without LockWaits, or with no single guest buffer for the reply header, it blocks as open(2) does.
   */
  open(io: FuseIo, u: bigint, nodeid: number, o: { flags: number; openFlags: number }): number {
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
  create(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const u = h.unique;
    const c = CreateIn.decode(a);
    const kill = this.session.kill((c.openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0);
    const cname = cstring(a, CreateIn.size);
    const label = labelOf(this.session, h, a, cname.next);
    const creator = creatorOf(this.session, h, a);
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
    const outBuf = this.replies.outBuf;
    const gpa = io.outHeaderGpa();
    const canWait = waits !== null && gpa >= 0 && io.outLength >= OUT_HEADER_SIZE + bodySize && (guestFlags & O_NONBLOCK) === 0;
    try {
      openOnce(canWait, outBuf, OUT_HEADER_SIZE);
      return this.replies.reply(io, u, 0, bodySize);
    } catch (e) {
      if (!canWait || !(e instanceof SysError || e instanceof FsError) || e.errno !== E.EAGAIN) throw e;
    }
    const [lo, hi] = uniqueHalves(u);
    if (waits.interrupted(lo, hi)) return this.replies.reply(io, u, -E.EINTR);
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
      openOnce(false, outBuf, OUT_HEADER_SIZE);
      return this.replies.reply(io, u, 0, bodySize);
    }
    return DEFERRED;
  }
}
