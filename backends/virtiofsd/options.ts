import type { XattrRule } from './xattrmap.js';
import type { IdRule } from './idmap.js';
import { E, FsError } from './errors.js';

/** Settings of one passthrough filesystem (the parsed kumo-virtiofsd command line, minus the socket). */
export type CacheMode = 'auto' | 'always' | 'never' | 'metadata';
export type SandboxMode = 'namespace' | 'chroot' | 'none';
export type FileHandleMode = 'never' | 'prefer' | 'mandatory';

export interface FsOptions {
  sharedDir: string;
  cache: CacheMode;
  /** QEMU virtiofsd's -o timeout=SECONDS: entry and attribute cache time, instead of the cache mode's. */
  timeout: number | null;
  xattr: boolean;
  /** --xattrmap: how xattr names are renamed or refused between guest and host (null: passed as they are). */
  xattrmap: XattrRule[] | null;
  posixLock: boolean;
  /** QEMU virtiofsd's -o flock: flock(2) from the guest reaches the host file (FUSE_FLOCK_LOCKS). */
  flock: boolean;
  /** --killpriv-v2: the daemon clears set-user-ID bits on unprivileged writes (FUSE_HANDLE_KILLPRIV_V2). */
  killPrivV2: boolean;
  /** --security-label: new inodes get the label the guest's LSM chose (FUSE_SECURITY_CTX), as an xattr. */
  securityLabel: boolean;
  /** --posix-acl: the guest kernel enforces POSIX ACLs, kept as system.posix_acl_* xattrs on the host. */
  posixAcl: boolean;
  /**
   * --security-label=auto / --posix-acl=auto (newer virtiofsd's modes): offered, but a guest kernel without them is
   * served without them instead of refused at INIT (--x and --x=always refuse it).
   */
  securityLabelAuto: boolean;
  posixAclAuto: boolean;
  /** --translate-uid / --translate-gid rules (empty: IDs pass unchanged). */
  translateUid: IdRule[];
  translateGid: IdRule[];
  readonly: boolean;
  /** How many fds the guest may make the daemon hold (ENFILE beyond; see GuestFds). */
  guestFdLimit: number;
  writeback: boolean;
  allowDirectIo: boolean;
  /** --allow-mmap: the guest may map direct-I/O files shared (FUSE_DIRECT_IO_ALLOW_MMAP). */
  allowMmap: boolean;
  announceSubmounts: boolean;
  readdirplus: boolean;
  /** --preserve-noatime: keep the guest's O_NOATIME (virtiofsd drops it: unprivileged it fails on others' files). */
  preserveNoatime: boolean;
  inodeFileHandles: FileHandleMode;
  /** With file handles: how many inode fds stay open between requests (KUMO_FS_OPEN_INODE_FDS). */
  openInodeFds: number;
  sandbox: SandboxMode;
}

export const defaultFsOptions = (sharedDir: string): FsOptions => ({
  sharedDir,
  cache: 'auto',
  timeout: null,
  xattr: false,
  xattrmap: null,
  posixLock: false,
  flock: false,
  killPrivV2: false,
  securityLabel: false,
  posixAcl: false,
  securityLabelAuto: false,
  posixAclAuto: false,
  translateUid: [],
  translateGid: [],
  readonly: false,
  guestFdLimit: Number.MAX_SAFE_INTEGER,
  writeback: false,
  allowDirectIo: false,
  allowMmap: false,
  announceSubmounts: true,
  readdirplus: true,
  preserveNoatime: false,
  inodeFileHandles: 'never',
  openInodeFds: 1024,
  sandbox: 'none',
});

/** Entry/attr timeout in seconds for a cache mode (virtiofsd: never 0, auto 1 s, always/metadata 1 day). */
export function cacheTimeout(c: CacheMode): number {
  return c === 'never' ? 0 : c === 'auto' ? 1 : 86400;
}

/** What INIT agreed with the guest: set on PassthroughFs by the server, read by the operations it runs. */
export interface Negotiated {
  /** FUSE_SUBMOUNTS: only then are mount points flagged. */
  readonly submountsNegotiated: boolean;
  /** FUSE_WRITEBACK_CACHE agreed (not merely offered by --writeback): the guest's page cache writes back. */
  readonly writebackNegotiated: boolean;
  /** --posix-acl and the guest's FUSE_POSIX_ACL (see PassthroughFs.aclsNegotiated). */
  readonly aclsNegotiated: boolean;
  /** FUSE_CREATE_SUPP_GROUP (see PassthroughFs.suppGroupsNegotiated). */
  readonly suppGroupsNegotiated: boolean;
}

/** Refuses a change to a read-only share. */
export function writable(opts: FsOptions): void {
  if (opts.readonly) throw new FsError(E.EROFS, 'read-only share');
}
