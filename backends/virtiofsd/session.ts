import { Fopen, Init } from '../../protocol/fuse/index.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import type { FsOptions } from './options.js';
import { E, FsError } from './errors.js';

const log = logger('virtiofsd');
/** Said once per INIT, which a guest sends as often as it likes: rate-limited. */
const initLog = new WarnLimiter(log);

/** Flags we are willing to accept from the guest's INIT offer whatever the options. */
const WANTED =
  Init.ASYNC_READ | Init.PARALLEL_DIROPS | Init.BIG_WRITES | Init.AUTO_INVAL_DATA | Init.ASYNC_DIO |
  Init.HAS_IOCTL_DIR | Init.ATOMIC_O_TRUNC | Init.MAX_PAGES | Init.INIT_EXT | Init.DO_READDIRPLUS | Init.READDIRPLUS_AUTO |
  Init.CREATE_SUPP_GROUP;

/**
 * What INIT settled for one FUSE connection. Both request decoders (the fast path and the generic one)
 * read it, so a negotiated behaviour cannot differ between them.
 */
export class FuseSession {
  initialized = false;
  /** POSIX ACLs negotiated: the guest sends modes unmasked with its umask beside them (FUSE_DONT_MASK). */
  private dontMask = false;
  /** FUSE_SETXATTR_EXT negotiated: setxattr_in carries setxattr_flags. */
  setxattrExt = false;
  /**
   * FUSE_HANDLE_KILLPRIV_V2 negotiated: the guest no longer clears set-user-ID and set-group-ID bits itself
   * after a write, truncate or chown by an unprivileged caller; it flags those requests and the daemon does it.
   */
  killPrivV2 = false;
  /** FUSE_SECURITY_CTX negotiated: creations carry the label the guest's LSM chose (--security-label). */
  securityCtx = false;
  /**
   * FUSE_CREATE_SUPP_GROUP negotiated: a creation in a directory whose group the caller has only as a
   * supplementary group carries that group, so the host's permission check sees it too.
   */
  createSuppGroup = false;

  constructor(private readonly opts: FsOptions) {}

  /** The INIT flags to answer for the guest's offer (flags | flags2 << 32), and the session they set up. */
  negotiate(offered: bigint): bigint {
    const o = this.opts;
    let want = WANTED;
    if (o.posixLock) want |= Init.POSIX_LOCKS;
    if (o.flock) want |= Init.FLOCK_LOCKS;
    if (o.writeback) want |= Init.WRITEBACK_CACHE;
    if (o.announceSubmounts) want |= Init.SUBMOUNTS;
    if (o.killPrivV2) want |= Init.HANDLE_KILLPRIV_V2;
    if (o.securityLabel) want |= Init.SECURITY_CTX;
    // Shared mmap of files opened with direct I/O (cache=never, metadata); Linux 6.6+ offers it.
    if (o.allowMmap) want |= Init.DIRECT_IO_ALLOW_MMAP;
    // The guest checks ACLs itself and leaves the umask to us (the host applies it unless a default ACL rules).
    if (o.posixAcl) want |= Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT;
    // cache=never: the guest drops the attributes READDIRPLUS carries, which would only pin an inode per entry here.
    if (!o.readdirplus || o.cache === 'never') want &= ~(Init.DO_READDIRPLUS | Init.READDIRPLUS_AUTO);
    const flags = offered & want;
    // As virtiofsd: running on without what the user asked for would serve files with modes or labels they do not
    // have. ACLs need all three: without SETXATTR_EXT the guest cannot say that the caller setting an access ACL
    // loses set-group-ID (FUSE_SETXATTR_ACL_KILL_SGID), and the daemon would keep it.
    const acl = Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT;
    if (o.posixAcl && !o.posixAclAuto && (offered & acl) !== acl) refuse('--posix-acl: the guest kernel does not offer FUSE_POSIX_ACL, FUSE_DONT_MASK and FUSE_SETXATTR_EXT');
    if (o.securityLabel && !o.securityLabelAuto && (offered & Init.SECURITY_CTX) === 0n) refuse('--security-label: the guest kernel does not offer FUSE_SECURITY_CTX');
    if (o.allowMmap && (flags & Init.DIRECT_IO_ALLOW_MMAP) === 0n) initLog.info({}, '--allow-mmap: the guest kernel does not offer FUSE_DIRECT_IO_ALLOW_MMAP; direct-I/O files cannot be mapped shared');
    if (o.killPrivV2 && (flags & Init.HANDLE_KILLPRIV_V2) === 0n) initLog.info({}, '--killpriv-v2: the guest kernel does not offer it; the guest clears set-user-ID bits itself');
    this.dontMask = (flags & Init.DONT_MASK) !== 0n;
    this.setxattrExt = (flags & Init.SETXATTR_EXT) !== 0n;
    this.killPrivV2 = (flags & Init.HANDLE_KILLPRIV_V2) !== 0n;
    this.securityCtx = (flags & Init.SECURITY_CTX) !== 0n;
    this.createSuppGroup = (flags & Init.CREATE_SUPP_GROUP) !== 0n;
    this.initialized = true;
    return flags;
  }

  /** The umask a creation applies itself: the guest's once it stopped masking modes, else none. */
  umask(guestUmask: number): number {
    return this.dontMask ? guestUmask & 0o777 : 0;
  }

  /**
   * Whether a request's kill-privileges flag is to be acted on. OPEN's and SETATTR's came with FUSE_HANDLE_KILLPRIV_V2
   * and count only once it is agreed. WRITE's is older (FUSE 7.31): a guest kernel sets it on every direct write by
   * a caller without CAP_FSETID (cache=never, O_DIRECT) and clears nothing itself there, so it always counts, as in
   * QEMU's virtiofsd (a non-root writer left set-user-ID behind).
   */
  kill(flagged: boolean, write = false): boolean {
    return flagged && (write || this.killPrivV2);
  }

  /**
   * open_out.open_flags for a file or directory handle, from the cache mode as virtiofsd sets them: never and
   * metadata keep file data out of the guest's page cache (direct I/O), always and metadata keep directory
   * listings across opens, always keeps file data across opens.
   */
  fopenFlags(dir: boolean): number {
    const c = this.opts.cache;
    if (dir) return c === 'always' || c === 'metadata' ? Fopen.CACHE_DIR | Fopen.KEEP_CACHE : 0;
    if (c === 'never' || c === 'metadata') return Fopen.DIRECT_IO;
    return c === 'always' ? Fopen.KEEP_CACHE : 0;
  }
}

function refuse(why: string): never {
  initLog.error({}, `${why}; INIT refused`);
  throw new FsError(E.EPROTO, why);
}
