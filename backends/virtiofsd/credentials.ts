import * as fs from '../../protocol/sys/fs.js';
import { SysError, rawSyscall } from '../../protocol/sys/libc.js';
import { capNumber, withEffectiveCap, withoutEffectiveCap } from '../../protocol/sys/caps.js';
import { logger } from '../../protocol/log.js';
import { E, FsError } from './errors.js';
import { FORBIDDEN, type IdMaps } from './idmap.js';
import type { Negotiated } from './options.js';

/** (uid_t)-1 / (gid_t)-1. */
const NO_ID = 0xffffffff;
const CAP_FSETID = capNumber('fsetid');
const CAP_DAC_OVERRIDE = capNumber('dac_override');

const log = logger('virtiofsd');

export interface Caller {
  uid: number;
  gid: number;
  pid: number;
  /** The supplementary group a creation carries (FUSE_CREATE_SUPP_GROUP), if any. */
  suppGid?: number | null;
}

/**
 * The request thread's credentials: switching to a guest caller's IDs (mapped by --translate-uid/gid) and
 * supplementary group for a creation, and back.
 */
export class Credentials {
  private readonly euid: number;
  private readonly egid: number;
  /** This thread's supplementary groups, restored after a creation that carried the caller's. */
  private readonly groups: number[];
  private warnedGroups = false;

  constructor(
    /** --translate-uid / --translate-gid, or null when IDs pass unchanged. */
    private readonly ids: IdMaps | null,
    private readonly negotiated: Pick<Negotiated, 'suppGroupsNegotiated'>,
  ) {
    this.euid = rawSyscall(107); // geteuid
    this.egid = rawSyscall(108); // getegid
    this.groups = dropSupplementaryGroups();
  }

  /**
   * Runs a creation as the caller. `umask` is the guest's when it stopped masking modes itself (POSIX ACLs):
   * the host applies it, unless the parent's default ACL decides the mode. This thread's umask is otherwise 0.
   * `creating`: f makes a new entry (see PassthroughFs.suppGroupsNegotiated).
   */
  asCaller<T>(c: Caller, f: () => T, umask = 0, creating = false): T {
    const uid = this.hostId(c.uid, 'uid');
    const gid = this.hostId(c.gid, 'gid');
    const supp = c.suppGid != null ? this.hostId(c.suppGid, 'gid') : -1;
    // (A caller kept as root, see asIds, has every capability anyway.)
    const g = creating && !this.negotiated.suppGroupsNegotiated && uid !== 0 && uid !== this.euid ? () => withEffectiveCap(CAP_DAC_OVERRIDE, f) : f;
    if (supp < 0 || !this.setGroups([supp])) return this.asIds(uid, gid, g, umask);
    try {
      return this.asIds(uid, gid, g, umask);
    } finally {
      fs.setgroupsThread(this.groups);
    }
  }

  /**
   * Takes `groups` as this thread's supplementary groups: before the uid switch, since changing them needs
   * CAP_SETGID, which a non-root effective uid loses. An unprivileged daemon cannot: it goes on without them.
   */
  private setGroups(groups: number[]): boolean {
    try {
      fs.setgroupsThread(groups);
      return true;
    } catch (e) {
      if (!(e instanceof SysError) || e.errno !== E.EPERM) throw e;
      if (!this.warnedGroups) log.info('no CAP_SETGID: creations run without the supplementary group the guest sends');
      this.warnedGroups = true;
      return false;
    }
  }

  /**
   * Host root is never switched to, as in virtiofsd: a root caller's files get the daemon's own IDs. That changes
   * nothing for a root daemon, and lets an unprivileged one (in its user namespace, where 0 may be unmapped) serve
   * a guest's root.
   */
  private asIds<T>(uid: number, gid: number, f: () => T, umask: number): T {
    const switchGid = gid !== 0 && gid !== this.egid;
    const switchUid = uid !== 0 && uid !== this.euid;
    if (switchGid) fs.setresgidThread(-1, gid, -1);
    if (switchUid) {
      try {
        fs.setresuidThread(-1, uid, -1);
      } catch (e) {
        if (switchGid) fs.setresgidThread(-1, this.egid, -1);
        throw e;
      }
    }
    if (umask !== 0) fs.umask(umask);
    try {
      return f();
    } finally {
      if (umask !== 0) fs.umask(0);
      if (switchUid) fs.setresuidThread(-1, this.euid, -1);
      if (switchGid) fs.setresgidThread(-1, this.egid, -1);
    }
  }

  /** The guest's view of a host ID (--translate-uid/gid) in attribute replies. */
  guestId(hostId: number, kind: 'uid' | 'gid'): number {
    return this.ids === null ? hostId : this.ids[kind].toGuest(hostId);
  }

  /** The host ID for a guest's (--translate-uid/gid); EPERM for one that forbid-guest refuses. */
  hostId(guestId: number, kind: 'uid' | 'gid'): number {
    const id = this.ids === null ? guestId : this.ids[kind].toHost(guestId);
    if (id === FORBIDDEN) throw new FsError(E.EPERM, `guest ${kind} forbidden by --translate-${kind}`, { [kind]: guestId });
    // (uid_t)-1 means "unchanged" to setresuid and chown: a caller claiming it would act with the daemon's own IDs.
    if (guestId === NO_ID || id === NO_ID) throw new FsError(E.EINVAL, `${kind} 4294967295 is not an ID`, { [kind]: guestId });
    return id;
  }
}

/**
 * Runs `f` as a caller without CAP_FSETID when `kill` is set, so the host kernel clears set-user-ID and
 * set-group-ID bits (and file capabilities) exactly as it would for an unprivileged writer, as virtiofsd does.
 */
export function killingPrivs<T>(kill: boolean, f: () => T): T {
  return kill ? withoutEffectiveCap(CAP_FSETID, f) : f();
}

/**
 * Leaves this thread (the request thread) without supplementary groups, as virtiofsd does at start: a caller it
 * switches to must not act with the groups of whoever started the daemon (root's group 0, a service's extra groups).
 * Returns the groups the thread keeps: none, or its own where it may not change them (no CAP_SETGID, where it
 * switches to no caller either).
 */
function dropSupplementaryGroups(): number[] {
  try {
    fs.setgroupsThread([]);
    return [];
  } catch (e) {
    if (!(e instanceof SysError) || e.errno !== E.EPERM) throw e;
    return fs.getgroupsThread();
  }
}
