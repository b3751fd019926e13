import { FUSE_LK_FLOCK, LkIn, LkOut, type InHeader } from '../../protocol/fuse/index.js';
import { F_WRLCK } from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { logger } from '../../protocol/log.js';
import { DEFERRED } from './deferred.js';
import { E, FsError } from './errors.js';
import type { FuseIo } from './fuse-io.js';
import type { Inode } from './inodes.js';
import { closesCycle } from './lock-deadlock.js';
import type { LockWaits } from './lock-waits.js';
import type { PassthroughFs } from './passthrough.js';
import type { Replies } from './replies.js';
import { uniqueHalves } from './request-args.js';

const log = logger('virtiofsd');

/** GETLK, SETLK and SETLKW: POSIX locks and flock; a blocking one held elsewhere is waited for in LockWaits. */
export class LockRequests {
  constructor(
    private readonly fs: PassthroughFs,
    private readonly replies: Replies,
    private readonly waits: LockWaits | null,
  ) {}

  getlk(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const l = LkIn.decode(a);
    return this.replies.replyStruct(io, h.unique, LkOut, { lk: fs.getlk(fs.inode(h.nodeid), l.owner, l.lk, l.lkFlags) });
  }

  setlk(io: FuseIo, h: InHeader, a: Buffer): number {
    this.lock(LkIn.decode(a), this.fs.inode(h.nodeid));
    return this.replies.reply(io, h.unique, 0);
  }

  private lock(l: LkIn, i: Inode): void {
    this.fs.setlk(i, l.fh, l.owner, l.lk, l.lkFlags);
  }

  /**
   * SETLKW: a free lock is taken at once; one held elsewhere is waited for in LockWaits while other requests
   * go on (DEFERRED; then the LockWaits is the request's Deferrer). Without LockWaits, or with no single guest
   * buffer for the reply header, the answer is ENOLCK.
   */
  setlkw(io: FuseIo, h: InHeader, a: Buffer): number {
    const u = h.unique;
    const l = LkIn.decode(a);
    const i = this.fs.inode(h.nodeid);
    const attempt = (): number => {
      try {
        this.lock(l, i);
        return 0;
      } catch (e) {
        if (e instanceof SysError || e instanceof FsError) return -e.errno;
        log.error({ err: e }, 'lock attempt failed');
        return -E.EIO;
      }
    };
    const r = attempt();
    if (r !== -E.EAGAIN) return this.replies.reply(io, u, r);
    const gpa = io.outHeaderGpa();
    const [lo, hi] = uniqueHalves(u);
    if (this.waits?.interrupted(lo, hi)) return this.replies.reply(io, u, -E.EINTR);
    const waits = this.waits;
    const want = (l.lkFlags & FUSE_LK_FLOCK) === 0 ? { inode: i, owner: l.owner, write: l.lk.type === F_WRLCK, start: l.lk.start, end: l.lk.end } : null;
    // As a local file system: the request that would close a cycle of waiting owners is answered EDEADLK.
    if (waits !== null && want !== null && closesCycle(want, (w) => this.fs.lockBlockers(w), (o) => waits.wanting(o))) {
      return this.replies.reply(io, u, -E.EDEADLK);
    }
    if (waits === null || gpa < 0 || !waits.park(attempt, gpa, lo, hi, want)) {
      return this.replies.reply(io, u, -E.ENOLCK);
    }
    return DEFERRED;
  }
}
