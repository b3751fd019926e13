import {
  Init, FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, FUSE_MIN_MINOR_VERSION, FUSE_MAX_WRITE, FuseProtocolError,
  InitIn, InitOut, InterruptIn,
} from '../../protocol/fuse/index.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { E } from './errors.js';
import type { FuseIo } from './fuse-io.js';
import type { LockWaits } from './lock-waits.js';
import type { PassthroughFs } from './passthrough.js';
import type { Replies } from './replies.js';
import type { FuseSession } from './session.js';

const log = logger('virtiofsd');
/** A guest sends INIT as often as it likes (a hostile kernel in a loop): what each says is rate-limited apart from guestWarn. */
const initLog = new WarnLimiter(log);

/** The requests that start and end a FUSE session (INIT and its negotiation, DESTROY) and INTERRUPT. */
export class SessionRequests {
  constructor(
    private readonly fs: PassthroughFs,
    private readonly session: FuseSession,
    private readonly replies: Replies,
    private readonly waits: LockWaits | null,
  ) {}

  init(io: FuseIo, u: bigint, a: Buffer): number {
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
      return this.replies.reply(io, u, -E.EPROTO);
    }
    const zero = { maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, mapAlignment: 0, flags2: 0 };
    if (i.major > FUSE_KERNEL_VERSION) {
      // Newer kernel: answer with our version only; it retries INIT with 7.x.
      return this.replies.replyStruct(io, u, InitOut, { major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, ...zero });
    }
    if (!whole) throw new FuseProtocolError('short INIT', { len: a.length, initExt: ext });
    const offered = BigInt(i.flags) | (ext ? BigInt(i.flags2) << 32n : 0n);
    const flags = this.session.negotiate(offered);
    this.fs.submountsNegotiated = (flags & Init.SUBMOUNTS) !== 0n;
    this.fs.writebackNegotiated = (flags & Init.WRITEBACK_CACHE) !== 0n;
    this.fs.aclsNegotiated = (flags & Init.POSIX_ACL) !== 0n;
    this.fs.suppGroupsNegotiated = (flags & Init.CREATE_SUPP_GROUP) !== 0n;
    initLog.info({ minor: i.minor, flags: `0x${flags.toString(16)}` }, 'FUSE session initialised');
    return this.replies.replyStruct(io, u, InitOut, {
      major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, maxReadahead: i.maxReadahead,
      flags: Number(flags & 0xffffffffn), maxBackground: 0xffff, congestionThreshold: 0xbfff, maxWrite: FUSE_MAX_WRITE,
      timeGran: 1, maxPages: FUSE_MAX_WRITE / 4096, mapAlignment: 0, flags2: Number(flags >> 32n),
    });
  }

  destroy(io: FuseIo, u: bigint): number {
    this.waits?.forgetEarlyInterrupts();
    this.fs.destroy();
    this.session.initialized = false;
    return this.replies.reply(io, u, 0);
  }

  /**
   * Only a waiting lock can be interrupted: every other request ran to completion when it was read. One for a
   * request not read yet is kept for it. No reply.
   */
  interrupt(a: Buffer): number {
    const target = InterruptIn.decode(a).unique;
    this.waits?.interrupt(Number(target & 0xffff_ffffn), Number(target >> 32n));
    return 0;
  }
}
