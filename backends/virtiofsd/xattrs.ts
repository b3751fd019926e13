import * as fs from '../../protocol/sys/fs.js';
import { close, O_DIRECTORY, O_NONBLOCK } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { E, FsError } from './errors.js';
import type { HostFiles } from './host-files.js';
import type { Inode } from './inodes.js';
import { writable, type FsOptions, type Negotiated } from './options.js';
import { XattrMap, type XattrAccess } from './xattrmap.js';

const XATTR_SIZE_MAX = 65536;
const ACL_ACCESS_XATTR = Buffer.from('system.posix_acl_access');
const ACL_DEFAULT_XATTR = Buffer.from('system.posix_acl_default');
const S_ISGID = 0o2000;

const log = logger('virtiofsd');
/** Once per write when it fails: rate-limited (see WarnLimiter). */
const capWarn = new WarnLimiter(log);

/** Extended attributes: GETXATTR and friends, --xattrmap, the ACL names, and security.capability where it was moved. */
export class Xattrs {
  private readonly xattrMap: XattrMap | null;
  /** Where --xattrmap moves security.capability on the host, or null where the host kernel keeps it (see dropCapabilities). */
  private readonly capXattr: Uint8Array | null;

  constructor(
    private readonly opts: FsOptions,
    private readonly files: HostFiles,
    private readonly negotiated: Pick<Negotiated, 'aclsNegotiated'>,
  ) {
    this.xattrMap = opts.xattrmap ? new XattrMap(opts.xattrmap) : null;
    this.capXattr = movedCapabilityXattr(this.xattrMap);
  }

  private xattrOn(): void {
    if (!this.opts.xattr) throw new FsError(E.ENOSYS, 'xattrs disabled');
  }

  /** Runs f with an fd usable by f*xattr, or with null for symlinks/special files (then the /proc path is used). */
  withXattrFd<T>(i: Inode, f: (fd: number | null, proc: string) => T): T {
    if (i.type !== fs.S_IFREG && i.type !== fs.S_IFDIR) {
      // No *xattrat calls: reach the inode through its /proc/self/fd link. A sandboxed thread has no
      // /proc mounted but its own cwd (unshare(CLONE_FS)), so it may chdir into the fd directory.
      if (!this.files.threadCwd) return f(null, `/proc/self/fd/${i.fd}`);
      fs.fchdir(this.files.procSelfFd);
      return f(null, String(i.fd));
    }
    // O_NONBLOCK: a host process's lease on the file answers EAGAIN at once instead of holding this thread, and every
    // request behind it, for lease-break-time (45 s), as virtiofsd opens it.
    const fd = this.files.reopen(i, i.type === fs.S_IFDIR ? O_DIRECTORY : O_NONBLOCK);
    try {
      return f(fd, '');
    } finally {
      close(fd);
    }
  }

  /**
   * `killSgid` (FUSE_SETXATTR_ACL_KILL_SGID, only sent under --posix-acl): the caller setting an access ACL
   * may not keep the set-group-ID bit, which this daemon (CAP_FSETID) would otherwise keep for it.
   */
  setxattr(i: Inode, name: Uint8Array, value: Uint8Array, flags: number, killSgid = false): void {
    this.xattrOn();
    this.aclXattrAllowed(name);
    writable(this.opts);
    const host = this.hostXattr(name, 'set');
    this.withXattrFd(i, (fd, p) => (fd !== null ? fs.fsetxattr(fd, host, value, flags) : fs.setxattr(p, host, value, flags)));
    if (killSgid && ACL_ACCESS_XATTR.equals(name)) {
      const mode = fs.fstat(i.fd).mode;
      if (mode & S_ISGID) fs.fchmodat(this.files.procSelfFd, String(i.fd), mode & 0o7777 & ~S_ISGID, 0);
    }
  }

  /** The ACL xattrs exist for the guest only with POSIX ACLs agreed (see PassthroughFs.aclsNegotiated). */
  aclXattrAllowed(name: Uint8Array): void {
    if (!this.negotiated.aclsNegotiated && isAclName(name)) throw new FsError(E.EOPNOTSUPP, 'POSIX ACLs are not enabled (--posix-acl)');
  }

  /**
   * The host kernel drops security.capability when a file is written, truncated or chowned; moved elsewhere by
   * --xattrmap it is an ordinary xattr to the host, so the daemon drops it itself (as virtiofsd does). A guest
   * with FUSE_HANDLE_KILLPRIV_V2 relies on that. `proc`: the /proc path when fd is null (an O_PATH inode).
   */
  dropCapabilities(fd: number | null, proc = ''): void {
    const name = this.capXattr;
    if (name === null) return;
    try {
      if (fd !== null) fs.fremovexattr(fd, name);
      else fs.removexattr(proc, name);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      // The change it follows is made already: a failure here must not turn it into an error for the guest.
      if (e.errno !== E.ENODATA && e.errno !== E.EOPNOTSUPP) capWarn.warn({ err: e.message }, 'could not drop the moved security.capability xattr');
    }
  }

  /** dropCapabilities for a chowned inode, which has no fd open for writing. */
  dropInodeCapabilities(i: Inode): void {
    if (this.capXattr !== null && i.type === fs.S_IFREG) this.withXattrFd(i, (fd, p) => this.dropCapabilities(fd, p));
  }

  hostXattr(name: Uint8Array, access: XattrAccess): Uint8Array {
    return this.xattrMap?.toServer(name, access) ?? name;
  }

  /** size 0 asks for the value's length. */
  getxattr(i: Inode, name: Uint8Array, size: number): number | Uint8Array {
    this.xattrOn();
    this.aclXattrAllowed(name);
    const host = this.hostXattr(name, 'get');
    const buf = size > 0 ? Buffer.alloc(Math.min(size, XATTR_SIZE_MAX)) : null;
    const n = this.withXattrFd(i, (fd, p) => (fd !== null ? fs.fgetxattr(fd, host, buf) : fs.getxattr(p, host, buf)));
    return buf ? buf.subarray(0, n) : n;
  }

  listxattr(i: Inode, size: number): number | Uint8Array {
    this.xattrOn();
    const map = this.xattrMap;
    const filtered = map !== null || !this.negotiated.aclsNegotiated;
    // Mapped or hidden names change the list's length: the whole host list is read even when only its size is asked.
    const buf = filtered ? Buffer.alloc(XATTR_SIZE_MAX) : size > 0 ? Buffer.alloc(Math.min(size, XATTR_SIZE_MAX)) : null;
    const n = this.withXattrFd(i, (fd, p) => (fd !== null ? fs.flistxattr(fd, buf) : fs.listxattr(p, buf)));
    if (!filtered) return buf ? buf.subarray(0, n) : n;
    const mapped = map !== null ? map.mapList((buf as Buffer).subarray(0, n)) : (buf as Buffer).subarray(0, n);
    const list = this.negotiated.aclsNegotiated ? mapped : withoutAclNames(mapped);
    if (size === 0) return list.length;
    if (list.length > size) throw new FsError(E.ERANGE, 'xattr list larger than the buffer', { size, needed: list.length });
    return list;
  }

  removexattr(i: Inode, name: Uint8Array): void {
    this.xattrOn();
    this.aclXattrAllowed(name);
    writable(this.opts);
    const host = this.hostXattr(name, 'set');
    this.withXattrFd(i, (fd, p) => (fd !== null ? fs.fremovexattr(fd, host) : fs.removexattr(p, host)));
  }
}

/** The host name --xattrmap gives security.capability, when it is not that name itself (null: unmoved or refused). */
function movedCapabilityXattr(map: XattrMap | null): Uint8Array | null {
  if (map === null) return null;
  const name = Buffer.from('security.capability');
  try {
    const host = map.toServer(name, 'set');
    return Buffer.compare(Buffer.from(host), name) === 0 ? null : host;
  } catch {
    return null; // the guest cannot set it at all
  }
}

function isAclName(name: Uint8Array): boolean {
  return ACL_ACCESS_XATTR.equals(name) || ACL_DEFAULT_XATTR.equals(name);
}

/** A listxattr list (NUL-terminated names) without the ACL names. */
function withoutAclNames(list: Uint8Array): Uint8Array {
  const kept: Uint8Array[] = [];
  for (let at = 0; at < list.length;) {
    let end = list.indexOf(0, at);
    if (end < 0) end = list.length;
    if (!isAclName(list.subarray(at, end))) kept.push(list.subarray(at, end + 1));
    at = end + 1;
  }
  return Buffer.concat(kept);
}
