import { FsConfigError } from './errors.js';
import { parseXattrMap } from './xattrmap.js';
import { idMaps, parseIdRange, parseIdRule, type IdRange, type IdRule } from './idmap.js';
import { parseModcaps, type ModCaps } from './capabilities.js';
import { SECCOMP_ACTIONS, type SeccompAction } from '../../protocol/sys/seccomp.js';
import { defaultFsOptions, type CacheMode, type FileHandleMode, type FsOptions, type SandboxMode } from './options.js';

export interface DaemonConfig {
  /** --socket-path, or null with --fd. */
  socketPath: string | null;
  /** --fd: a listening socket inherited from the parent (libvirt, Kata), instead of --socket-path. */
  listenFd: number | null;
  /** --socket-group: group (name or number) given to the socket file. */
  socketGroup: string | null;
  /** --syslog: log to the local syslog instead of stderr. */
  syslog: boolean;
  tag: string | null;
  /** null: not given (large READs may use io-wq threads); 0: everything inline on the queue thread. */
  threadPoolSize: number | null;
  /** --seccomp: the request thread's syscall filter (x86-64 only). */
  seccomp: SeccompAction;
  /** --modcaps: changes to the capabilities the request thread keeps. */
  modcaps: ModCaps | null;
  /** virtiofsd options given that kumo accepts but does not implement (warned about at start). */
  ignored: string[];
  /** Deprecated spellings given (virtiofsd warns about the same ones at start). */
  deprecated: string[];
  /** kumo extension: busy-poll window (µs) after the last request; 0 sleeps at once. */
  pollUs: number | null;
  rlimitNofile: number | null;
  /** A pino level: error, warn, info, debug, trace or silent (virtiofsd's off). */
  logLevel: string | null;
  /** --uid-map / --gid-map: the ranges of the user namespace an unprivileged daemon runs in (see namespaces.ts). */
  uidMap: IdRange[];
  gidMap: IdRange[];
  fs: FsOptions;
}

export const USAGE = `kumo-virtiofsd --socket-path=PATH|--fd=N --shared-dir=DIR [--socket-group=GROUP] [--tag=TAG] [--cache=auto|always|never|metadata]
  [--sandbox=namespace|chroot|none] [--thread-pool-size=N] [--xattr] [--posix-lock] [--posix-acl[=MODE]] [--no-announce-submounts]
  [--readonly] [--inode-file-handles=never|prefer|mandatory] [--writeback] [--allow-direct-io]
  [--no-readdirplus] [--allow-mmap] [--rlimit-nofile=N] [--log-level=error|warn|info|debug|trace|off] [--syslog] [--poll-us=N] [--print-capabilities]
  [--seccomp=none|kill|log|trap] [--preserve-noatime] [--xattrmap=RULES] [--modcaps=LIST] [--killpriv-v2] [--security-label[=MODE]]
  [--translate-uid=RULE] [--translate-gid=RULE] [--uid-map=:INSIDE:OUTSIDE:COUNT:] [--gid-map=:INSIDE:OUTSIDE:COUNT:]
QEMU spelling also accepted: -o source=DIR,cache=...,sandbox=...,xattr,xattrmap=RULES,posix_lock,posix_acl,flock,killpriv_v2,
  writeback,readdirplus
--xattrmap=RULES (implies --xattr): virtiofsd's xattr name mapping, e.g. ':map::user.virtiofs.:' keeps every guest
  xattr under user.virtiofs. on the host; rules :prefix|ok|bad|unsupported:client|server|all:KEY:PREPEND:
--thread-pool-size=N: with a second CPU, large READs may be copied, and FSYNCs on disk-backed files waited
  for, by io_uring worker threads while other requests go on; N caps those threads, 0 keeps all of them on the
  request thread (default: CPUs - 1)
--seccomp: the thread that serves guest requests (and the one that signals the guest for it) may make only the
  syscalls its work needs; any other kills the daemon (kill, the default, or trap: SIGSYS), is logged by the kernel
  (log) or allowed (none)
--preserve-noatime: keep the guest's O_NOATIME (dropped by default, as virtiofsd does)
--modcaps=+CAP:-CAP...: the thread serving guest requests keeps only chown, dac_override, fowner, fsetid,
  setgid, setuid, mknod and setfcap (plus dac_read_search with file handles), as virtiofsd does; +CAP adds, -CAP removes
--posix-acl (implies --xattr): the guest enforces POSIX ACLs; the share keeps them as system.posix_acl_* xattrs
--posix-acl=MODE, --security-label=MODE: always (the bare flag: a guest kernel without the feature is refused at
  INIT), auto (served without it then), never
-o timeout=SECONDS: how long the guest may cache entries and attributes (default by --cache: never 0, auto 1,
  always and metadata 1 day)
--killpriv-v2: the daemon, not the guest, clears set-user-ID and set-group-ID bits when an unprivileged guest
  process writes, truncates or chowns a file (one request instead of two, and no window between them)
-o flock: flock(2) in the guest locks the host file, so guests and host processes sharing it exclude each other
  (without it the guest kernel keeps flock locks to itself)
--security-label (implies --xattr): a new file, directory, node or symlink gets the label the guest's LSM chose
  (SELinux: security.selinux, which the host accepts only with --modcaps=+sys_admin or an --xattrmap rule that
  renames it); a label that cannot be set undoes the creation
--translate-uid=RULE, --translate-gid=RULE (repeatable): translate IDs between guest and host in the daemon.
  RULE is map|guest|host|squash-guest|squash-host:FROM:TO:COUNT or forbid-guest:FROM:COUNT, e.g.
  squash-guest:0:1000:4294967295 gives every file a guest creates host owner 1000 (guest or host
  IDs no rule covers pass unchanged; a forbid-guest ID cannot create or own files: EPERM)
--sandbox=namespace: the daemon runs in a new pid namespace (made by util-linux's unshare; without it, it serves
  without one) and this process waits outside, passing signals on, as virtiofsd does. Started unprivileged, also in
  a new user namespace with the capabilities it has there; inside, it keeps the user's own
  uid and gid, or the ranges of --uid-map/--gid-map=:INSIDE:OUTSIDE:COUNT: (repeatable; newuidmap/newgidmap check
  them against /etc/subuid and /etc/subgid). A guest's root creates files as the daemon's own IDs.
--rlimit-nofile=N: the daemon's fd limit (default min(1000000, nr_open); 0 leaves it as it is); the guest may make
  it hold N less 384 (plus the inode fd cache with --inode-file-handles), and gets ENFILE beyond
--no-announce-submounts: do not tell the guest which directories are host mount points (announced by default)
--allow-mmap: guests may mmap files shared under --cache=never or metadata (which open them with direct I/O)
Accepted for compatibility but without effect (a warning says so): -o allow_root, -o max_idle_threads,
  --migration-mode, --migration-on-error, --migration-verify-handles, --migration-confirm-paths (the daemon
  offers no device-state transfer, so front-ends do not migrate a VM using it)
--inode-file-handles=prefer|mandatory: inodes are known by file handle; at most KUMO_FS_OPEN_INODE_FDS (1024)
  of their O_PATH fds stay open, the rest are reopened by handle when used (needs CAP_DAC_READ_SEARCH).`;

function oneOf<T extends string>(name: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v)) throw new FsConfigError(`--${name} must be one of ${allowed.join('|')}`, { value: v });
  return v as T;
}

/** virtiofsd's --log-level values (and QEMU virtiofsd's -o log_level/loglevel ones) as pino levels. */
const LOG_LEVELS: Record<string, string> = {
  error: 'error', err: 'error', warn: 'warn', warning: 'warn', info: 'info', debug: 'debug', trace: 'trace', off: 'silent',
};

function int(name: string, v: string): number {
  // Decimal digits only, as virtiofsd's integer options: no '', hex, exponents or blanks (Number() takes them all).
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) throw new FsConfigError(`--${name} must be a non-negative integer`, { value: v });
  return n;
}

/** Options that take no value: `--readonly=false` or `-o writeback=no` is an error, not --readonly or -o writeback. */
const FLAGS = new Set([
  'xattr', 'no_xattr', 'posix-lock', 'posix_lock', 'no_posix_lock', 'posix_acl', 'no_posix_acl',
  'announce-submounts', 'announce_submounts', 'no-announce-submounts', 'readonly', 'writeback', 'no_writeback',
  'allow-direct-io', 'allow_direct_io', 'no_allow_direct_io', 'allow-mmap', 'allow_mmap', 'readdirplus', 'no-readdirplus',
  'no_readdirplus', 'preserve-noatime', 'syslog', 'flock', 'no_flock', 'killpriv-v2', 'killpriv_v2', 'no-killpriv-v2',
  'no_killpriv_v2', 'security_label', 'no_security_label', 'allow_root', 'debug',
  'migration-verify-handles', 'migration-confirm-paths',
]);

/**
 * --security-label / --posix-acl and newer virtiofsd's =never|auto|always forms (bare: always). The QEMU -o spelling
 * (security_label, posix_acl) takes no value.
 */
function featureMode(key: string, val: string | null): 'never' | 'auto' | 'always' {
  if (val === null) return 'always';
  if (key.includes('_')) throw new FsConfigError(`${key} takes no value`, { option: key, value: val });
  return oneOf(key, val, ['never', 'auto', 'always']);
}

/** Parses virtiofsd's (Rust) command line, plus QEMU virtiofsd's `-o k=v,...` and `--socket-path` forms. */
export function parseArgs(argv: string[]): DaemonConfig {
  let socketPath: string | null = null;
  let sharedDir: string | null = null;
  const cfg = { syslog: false, listenFd: null as number | null, socketGroup: null as string | null, tag: null as string | null, threadPoolSize: null as number | null, seccomp: 'kill' as SeccompAction, modcaps: null as ModCaps | null, ignored: [] as string[], deprecated: [] as string[], pollUs: null as number | null, rlimitNofile: null as number | null, logLevel: null as string | null, uidMap: [] as IdRange[], gidMap: [] as IdRange[] };
  const o: Partial<FsOptions> = { sandbox: 'namespace' };
  const translate: Record<'uid' | 'gid', IdRule[]> = { uid: [], gid: [] };
  const migration = { mode: 'find-paths', pathChecks: [] as string[] };
  const set = (key: string, val: string | null): void => {
    if (val !== null && FLAGS.has(key)) throw new FsConfigError(`${key} takes no value`, { option: key, value: val });
    const v = val ?? '';
    switch (key) {
      case 'socket-path': socketPath = v; break;
      case 'socket':
        socketPath = v;
        cfg.deprecated.push("--socket is deprecated: use --socket-path");
        break;
      case 'fd': cfg.listenFd = int(key, v); break;
      case 'socket-group': if (v === '') throw new FsConfigError('--socket-group needs a group'); cfg.socketGroup = v; break;
      case 'shared-dir': case 'source': sharedDir = v; break;
      case 'tag': cfg.tag = v; break;
      // As virtiofsd, the values of these two in any case.
      case 'cache': o.cache = oneOf('cache', v.toLowerCase() === 'none' ? 'never' : v.toLowerCase(), ['auto', 'always', 'never', 'metadata'] as CacheMode[]); break;
      case 'sandbox': o.sandbox = oneOf('sandbox', v.toLowerCase(), ['namespace', 'chroot', 'none'] as SandboxMode[]); break;
      case 'thread-pool-size': cfg.threadPoolSize = int(key, v); break;
      case 'seccomp': cfg.seccomp = oneOf(key, v, SECCOMP_ACTIONS); break;
      case 'rlimit-nofile': cfg.rlimitNofile = int(key, v); break;
      case 'poll-us': case 'poll_us': cfg.pollUs = int(key, v); break;
      case 'log-level': case 'log_level': case 'loglevel':
        // Any case, as virtiofsd's (the log crate's level names).
        cfg.logLevel = LOG_LEVELS[oneOf(key, v.toLowerCase(), Object.keys(LOG_LEVELS))];
        break;
      case 'inode-file-handles':
        if (v === 'fallback') cfg.deprecated.push("--inode-file-handles=fallback is deprecated: use 'prefer'");
        o.inodeFileHandles = oneOf(key, v === 'fallback' || v === '' ? 'prefer' : v, ['never', 'prefer', 'mandatory'] as FileHandleMode[]);
        break;
      case 'xattr': o.xattr = true; break;
      case 'no_xattr': o.xattr = false; break;
      case 'xattrmap':
        o.xattrmap = parseXattrMap(v);
        o.xattr = true;
        break;
      case 'posix-lock': case 'posix_lock': o.posixLock = true; break;
      case 'no_posix_lock': o.posixLock = false; break;
      case 'posix-acl': case 'posix_acl': {
        const mode = featureMode(key, val);
        o.posixAcl = mode !== 'never';
        o.posixAclAuto = mode === 'auto';
        if (o.posixAcl) o.xattr = true;
        break;
      }
      case 'no_posix_acl': o.posixAcl = false; break;
      case 'announce-submounts': case 'announce_submounts': o.announceSubmounts = true; break;
      case 'no-announce-submounts': o.announceSubmounts = false; break;
      case 'readonly': o.readonly = true; break;
      case 'writeback': o.writeback = true; break;
      case 'no_writeback': o.writeback = false; break;
      case 'allow-direct-io': case 'allow_direct_io': o.allowDirectIo = true; break;
      case 'no_allow_direct_io': o.allowDirectIo = false; break;
      case 'debug': cfg.logLevel = 'debug'; break;
      case 'allow-mmap': case 'allow_mmap': o.allowMmap = true; break;
      case 'readdirplus': o.readdirplus = true; break;
      case 'no-readdirplus': case 'no_readdirplus': o.readdirplus = false; break;
      case 'preserve-noatime': o.preserveNoatime = true; break;
      case 'syslog': cfg.syslog = true; break;
      case 'modcaps': cfg.modcaps = parseModcaps(v); break;
      case 'timeout': {
        const t = Number(v);
        if (v === '' || !Number.isFinite(t) || t < 0 || t > 0xffff_ffff) throw new FsConfigError('-o timeout must be a number of seconds', { value: v });
        o.timeout = t;
        break;
      }
      case 'flock': o.flock = true; break;
      case 'no_flock': o.flock = false; break;
      case 'killpriv-v2': case 'killpriv_v2': o.killPrivV2 = true; break;
      case 'no-killpriv-v2': case 'no_killpriv_v2': o.killPrivV2 = false; break;
      case 'security-label': case 'security_label': {
        const mode = featureMode(key, val);
        o.securityLabel = mode !== 'never';
        o.securityLabelAuto = mode === 'auto';
        if (o.securityLabel) o.xattr = true;
        break;
      }
      case 'no_security_label': o.securityLabel = false; break;
      case 'translate-uid': translate.uid.push(parseIdRule(key, v)); break;
      case 'translate-gid': translate.gid.push(parseIdRule(key, v)); break;
      case 'uid-map': cfg.uidMap.push(parseIdRange(key, v)); break;
      case 'gid-map': cfg.gidMap.push(parseIdRange(key, v)); break;
      // Accepted for command-line compatibility; they change nothing here (main.ts says so at start).
      case 'allow_root':
        cfg.ignored.push(key);
        break;
      // The daemon's state cannot be migrated (no vhost-user device-state transfer is offered), so a front-end
      // refuses to migrate a VM with this device; the values are still checked.
      case 'migration-mode': migration.mode = oneOf(key, v, ['find-paths', 'file-handles']); cfg.ignored.push(key); break;
      case 'migration-on-error': oneOf(key, v, ['abort', 'guest-error']); cfg.ignored.push(key); break;
      case 'migration-verify-handles': case 'migration-confirm-paths': migration.pathChecks.push(key); cfg.ignored.push(key); break;
      case 'max_idle_threads':
        int(key, v);
        cfg.ignored.push(key);
        break;
      default:
        throw new FsConfigError(`unknown option ${key}`, { option: key });
    }
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-o') {
      if (i + 1 >= argv.length) throw new FsConfigError('missing argument after -o');
      const list = argv[++i];
      for (const kv of list.split(',').filter(Boolean)) {
        const eq = kv.indexOf('=');
        set(eq < 0 ? kv : kv.slice(0, eq), eq < 0 ? null : kv.slice(eq + 1));
      }
    } else if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const key = eq < 0 ? a.slice(2) : a.slice(2, eq);
      const takesValue = ['socket-path', 'socket', 'shared-dir', 'tag', 'cache', 'sandbox', 'thread-pool-size', 'rlimit-nofile', 'poll-us', 'log-level', 'inode-file-handles', 'seccomp', 'fd', 'socket-group', 'modcaps', 'xattrmap', 'translate-uid', 'translate-gid', 'uid-map', 'gid-map', 'migration-mode', 'migration-on-error'].includes(key);
      const val = eq >= 0 ? a.slice(eq + 1) : takesValue ? (argv[++i] ?? '') : null;
      set(key, val);
    } else if (a === '-d') {
      cfg.logLevel ??= 'debug';
    } else if (a === '-f') {
      // QEMU virtiofsd's foreground flag: this daemon never forks.
    } else throw new FsConfigError(`unexpected argument ${a}`, { arg: a });
  }
  if (socketPath !== null && cfg.listenFd !== null) throw new FsConfigError('--socket-path and --fd cannot be used together');
  if (!socketPath && cfg.listenFd === null) throw new FsConfigError('--socket-path (or --fd) is required');
  if (cfg.socketGroup !== null && socketPath === null) throw new FsConfigError('--socket-group needs --socket-path (with --fd the parent owns the socket)');
  if (!sharedDir) throw new FsConfigError('--shared-dir (or -o source=) is required');
  if (cfg.tag !== null && (Buffer.byteLength(cfg.tag) === 0 || Buffer.byteLength(cfg.tag) > 36)) throw new FsConfigError('--tag must be 1..36 bytes');
  idMaps(translate.uid, translate.gid); // refuses overlapping ranges now rather than on the request thread
  // As virtiofsd ("Can't enable posix ACLs. xattrs are disabled."): a later no_xattr would leave FUSE_POSIX_ACL
  // granted to the guest with every system.posix_acl_* request answered ENOSYS.
  if (o.posixAcl === true && o.xattr === false) throw new FsConfigError('--posix-acl needs xattrs: it cannot be used with no_xattr');
  if (o.posixAcl === true && translate.uid.length + translate.gid.length > 0) {
    // As virtiofsd: ACL entries name host IDs inside xattr values, which the translation would not reach.
    throw new FsConfigError('--translate-uid and --translate-gid cannot be used with --posix-acl (the IDs inside ACLs would not be translated)');
  }
  if (migration.mode === 'file-handles' && migration.pathChecks.length > 0) {
    throw new FsConfigError(`--${migration.pathChecks[0]} only applies to --migration-mode=find-paths`);
  }
  return { socketPath, ...cfg, fs: { ...defaultFsOptions(sharedDir), ...o, translateUid: translate.uid, translateGid: translate.gid } };
}
