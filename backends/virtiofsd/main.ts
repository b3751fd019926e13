import { constants } from 'node:os';
import { logger, setLogLevel, useSyslog } from '../../protocol/log.js';
import { SYSLOG_SOCKET } from '../../protocol/syslog-sink.js';
import { KumoError, SetupError } from '../../protocol/errors.js';
import { KUMO_VERSION } from '../../protocol/version.js';
import { VhostUserDaemon } from '../../protocol/vhost-user/daemon.js';
import { MAX_MEM_SLOTS, VhostUserSocketError, stopOnUncaughtError } from '../../protocol/vhost-user/index.js';
import { getrlimit, setrlimit, openat, AT_FDCWD, RLIMIT_NOFILE } from '../../protocol/sys/fs.js';
import { closeQuiet, O_CLOEXEC, O_DIRECTORY, O_PATH } from '../../protocol/sys/fd.js';
import { listenerProblem } from '../../protocol/sys/socket.js';
import { leaveRemovedWorkingDirectory } from '../../protocol/sys/proc.js';
import { chmodSync, chownSync, readFileSync, statSync } from 'node:fs';
import { parseArgs, USAGE } from './cli.js';
import { DEFAULT_POLL_US, VirtioFsBackend } from './backend.js';
import { FsConfigError, FsError, FsUsageError } from './errors.js';
import { lockPidFile } from './pid-file.js';
import { InodeHandles } from './inode-handles.js';
import { requestThreadCaps } from './capabilities.js';
import type { FsOptions } from './options.js';
import { joinSupervisor, namespacesWanted, superviseInNamespaces } from './namespaces.js';

const O_PATH_DIR = O_PATH | O_DIRECTORY | O_CLOEXEC;

const log = logger('virtiofsd');

const DEFAULT_NOFILE = 1_000_000n;

/**
 * Sets RLIMIT_NOFILE (one O_PATH fd per inode the guest knows) as virtiofsd does, and returns the soft limit now in
 * force. --rlimit-nofile=N sets soft and hard limit to N, and a value the kernel refuses is an error; 0 leaves the
 * limit as it is. Without it the soft limit is raised to min(1000000, nr_open) unless it is already that high, or
 * to the hard limit (with a warning) when raising the hard limit is not allowed.
 */
function raiseNofile(want: number | null): number {
  const cur = getrlimit(RLIMIT_NOFILE);
  let target: bigint | null = want === null ? (cur.cur >= DEFAULT_NOFILE ? null : DEFAULT_NOFILE) : want === 0 ? null : BigInt(want);
  if (target !== null) {
    const nrOpen = readNrOpen(target);
    if (want === null && target > nrOpen) target = nrOpen;
    if (target > nrOpen) throw new FsConfigError(`--rlimit-nofile=${want}: the fd limit cannot be raised above ${nrOpen} (/proc/sys/fs/nr_open)`);
    try {
      setrlimit(RLIMIT_NOFILE, { cur: target, max: target });
    } catch (e) {
      const why = e instanceof KumoError ? e.message : String(e);
      if (want !== null) throw new FsConfigError(`--rlimit-nofile=${want}: ${why} (raising the hard limit ${cur.max} needs CAP_SYS_RESOURCE)`);
      log.warn({ wanted: Number(target), hard: Number(cur.max) }, 'cannot raise the fd limit past the hard limit; using the hard limit');
      setrlimit(RLIMIT_NOFILE, { cur: cur.max, max: cur.max });
    }
  }
  const now = getrlimit(RLIMIT_NOFILE);
  log.info({ soft: Number(now.cur), hard: Number(now.max) }, 'RLIMIT_NOFILE');
  return Number(now.cur);
}

/** fs.nr_open, the most RLIMIT_NOFILE may be; `fallback` where /proc/sys cannot be read (systemd ProcSubset=pid). */
function readNrOpen(fallback: bigint): bigint {
  try {
    return BigInt(readFileSync('/proc/sys/fs/nr_open', 'utf8').trim());
  } catch (e) {
    log.warn({ err: (e as Error).message }, 'cannot read /proc/sys/fs/nr_open: trying the fd limit asked for');
    return fallback;
  }
}

/**
 * The fds the daemon keeps for itself out of RLIMIT_NOFILE, beyond what the guest may make it hold: every memory
 * region a front-end may send (held by the main thread and again by the queue worker), queue eventfds, io_uring
 * rings and Node's own. virtiofsd keeps 609 plus one per pool thread.
 */
const INTERNAL_FDS = 2 * MAX_MEM_SLOTS + 256;

/**
 * The guest's share of the fd limit (see GuestFds); a clear error when the limit leaves it nothing. With
 * --inode-file-handles the inode fd cache (which GuestFds does not count) comes off too: twice, since besides the
 * openInodeFds cached fds InodeHandles keeps up to as many of inodes unlinked while the guest knows them.
 */
function guestFdLimit(soft: number, o: FsOptions, asked: boolean): number {
  const kept = INTERNAL_FDS + (o.inodeFileHandles === 'never' ? 0 : 2 * o.openInodeFds);
  const limit = soft - kept;
  if (limit < 1 && asked) throw new FsConfigError(`--rlimit-nofile: the fd limit is ${soft}, and the daemon keeps ${kept} for itself; it must be at least ${kept + 1}`);
  if (limit < 1) {
    throw new SetupError(`the fd limit is ${soft} and cannot be raised (hard limit: ulimit -Hn; docker --ulimit nofile=, systemd LimitNOFILE=); ` +
      `kumo-virtiofsd keeps ${kept} fds for itself and needs at least ${kept + 1}: raise the hard limit`);
  }
  if (limit < 128) log.warn({ limit }, 'the guest may hold very few fds; raise --rlimit-nofile');
  return limit;
}

const CAPABILITIES = JSON.stringify({ type: 'fs', features: ['separate-options'] }, null, 2) + '\n';

/** --socket-group: a group name from /etc/group, or a number. */
function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  let lines: string[] = [];
  try {
    lines = readFileSync('/etc/group', 'utf8').split('\n');
  } catch {
    /* no group database: only numbers work */
  }
  for (const line of lines) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new FsConfigError(`--socket-group: no such group ${JSON.stringify(group)}`, { group });
}

/** How long an orderly stop may take before the process exits anyway. */
const STOP_GRACE_MS = 3000;
let stopping = false;
/** The daemon once it is started: what the supervisor's signals and end stop (see joinSupervisor). */
let serving: VhostUserDaemon | null = null;

/**
 * daemon.stop() alone is not enough to end the process: it waits for the current connection and for the
 * queue worker to ack its exit, and a worker that does not answer (busy, or blocked in a native call that
 * Worker.terminate() cannot interrupt) would hold it forever, with nothing calling process.exit(). A signal
 * therefore stops the daemon with a deadline and then exits, like virtiofsd; a second signal exits at once.
 */
function shutdown(daemon: VhostUserDaemon, why: string): void {
  if (stopping) process.exit(1);
  stopping = true;
  log.info({ why }, 'shutting down');
  void stopWithin(daemon, STOP_GRACE_MS).then(() => process.exit(0));
}

async function stopWithin(daemon: VhostUserDaemon, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((r) => {
    timer = setTimeout(() => {
      log.warn({ ms }, 'daemon did not stop in time; exiting anyway');
      r();
    }, ms);
  });
  try {
    await Promise.race([daemon.stop().catch((e: unknown) => log.warn({ err: e }, 'stop failed')), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** --inode-file-handles: mandatory needs handles on the shared directory (a clear error now, not per request). */
function checkFileHandles(o: FsOptions): void {
  if (o.inodeFileHandles === 'never') return;
  const fd = openat(AT_FDCWD, o.sharedDir, O_PATH_DIR);
  const procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH_DIR);
  try {
    const t = InodeHandles.probe(o.inodeFileHandles, fd, procSelfFd, o.openInodeFds);
    t?.close();
    if (t === null) log.info('the shared directory has no file handles: inodes are held as O_PATH fds');
    else log.info({ openInodeFds: o.openInodeFds }, 'inodes identified by file handles');
  } catch (e) {
    if (e instanceof FsError) throw new FsConfigError(e.message, { dir: o.sharedDir });
    throw e;
  } finally {
    closeQuiet(fd);
    closeQuiet(procSelfFd);
  }
}

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (argv.includes('--print-capabilities')) {
    // vhost-user.rst "Backend program conventions": what management tools (libvirt) probe before launching.
    process.stdout.write(CAPABILITIES);
    return 0;
  }
  if (argv.includes('--version') || argv.includes('-V')) {
    process.stdout.write(`kumo-virtiofsd ${KUMO_VERSION}\n`);
    return 0;
  }
  let cfg: ReturnType<typeof parseArgs>;
  try {
    cfg = parseArgs(argv);
  } catch (e) {
    throw e instanceof FsConfigError ? new FsUsageError(e.message, e.context) : e;
  }
  if (cfg.logLevel) setLogLevel(cfg.logLevel);
  const supervised = joinSupervisor({
    signal: (sig) => (serving === null ? process.exit(128 + constants.signals[sig]) : shutdown(serving, sig)),
    gone: () => (serving === null ? process.exit(1) : shutdown(serving, 'supervisor exited')),
  });
  // Before the queue workers start: they pick the choice up from the environment.
  if (cfg.syslog && !useSyslog('kumo-virtiofsd')) log.warn({ socket: SYSLOG_SOCKET }, 'no syslog socket: logging to stderr');
  // Before the shared dir is looked at: a relative one ('.', '..') in a removed working directory names another
  // directory once the process moved to / (the request thread opens it by path): the host's root.
  leaveRemovedWorkingDirectory([cfg.fs.sharedDir, cfg.socketPath ?? undefined]);
  if (!statSync(cfg.fs.sharedDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new FsConfigError(`shared directory ${cfg.fs.sharedDir} does not exist or is not a directory`, { dir: cfg.fs.sharedDir });
  }
  const fdProblem = cfg.listenFd === null ? null : listenerProblem(cfg.listenFd);
  if (fdProblem !== null) throw new FsConfigError(`--fd=${cfg.listenFd}: ${fdProblem}`);
  const nsPlan = { uidMap: cfg.uidMap, gidMap: cfg.gidMap, listenFd: cfg.listenFd };
  const ns = supervised ? null : namespacesWanted(cfg.fs.sandbox, nsPlan);
  if (ns !== null) {
    const code = await superviseInNamespaces(argv, nsPlan, ns);
    if (code !== null) return code;
  }
  if (cfg.threadPoolSize !== null && cfg.threadPoolSize > 0) {
    log.info({ threadPoolSize: cfg.threadPoolSize }, 'requests run on the queue thread; large READs on at most this many io_uring worker threads');
  }
  const openFds = Number(process.env.KUMO_FS_OPEN_INODE_FDS ?? cfg.fs.openInodeFds);
  if (Number.isInteger(openFds) && openFds > 0) cfg.fs.openInodeFds = openFds;
  for (const d of cfg.deprecated) log.warn(d);
  for (const o of cfg.ignored) log.warn({ option: o }, `option ${o} is accepted for compatibility with virtiofsd but has no effect here`);
  checkFileHandles(cfg.fs);
  if (cfg.seccomp !== 'none' && process.arch !== 'x64') {
    log.warn({ arch: process.arch }, 'no seccomp allow-list for this architecture: --seccomp=none');
    cfg.seccomp = 'none';
  }
  cfg.fs.guestFdLimit = guestFdLimit(raiseNofile(cfg.rlimitNofile), cfg.fs, cfg.rlimitNofile !== null);
  const gid = cfg.socketGroup === null ? null : groupId(cfg.socketGroup);
  // Before the socket is bound: binding unlinks whatever socket file is there, another daemon's included.
  if (cfg.socketPath !== null) lockPidFile(cfg.socketPath);
  const daemon = new VhostUserDaemon(new VirtioFsBackend(cfg.fs, cfg.tag, {
    pollUs: cfg.pollUs ?? DEFAULT_POLL_US, threadPoolSize: cfg.threadPoolSize, seccomp: cfg.seccomp,
    capabilities: requestThreadCaps(cfg.fs.inodeFileHandles !== 'never', cfg.modcaps),
  }), {
    // Owner only whatever the umask, as virtiofsd: a vhost-user-fs front-end acts as root in the share.
    socketPath: cfg.socketPath ?? undefined, socketMode: 0o700, listenFd: cfg.listenFd ?? undefined, exitOnDisconnect: true, name: 'virtiofsd',
  });
  stopOnUncaughtError(daemon, log);
  await daemon.start();
  if (gid !== null && cfg.socketPath !== null) {
    try {
      // The group may connect: connect(2) on a Unix socket needs write permission on its file.
      chownSync(cfg.socketPath, -1, gid);
      chmodSync(cfg.socketPath, statSync(cfg.socketPath).mode | 0o060);
    } catch (e) {
      await stopWithin(daemon, STOP_GRACE_MS); // its workers would keep the process from exiting
      throw new FsConfigError(`--socket-group: cannot give the socket to group ${gid}: ${(e as Error).message}`);
    }
  }
  log.info({ socket: cfg.socketPath ?? `fd ${cfg.listenFd}`, dir: cfg.fs.sharedDir, sandbox: cfg.fs.sandbox, cache: cfg.fs.cache }, 'Waiting for vhost-user socket connection...');
  serving = daemon;
  process.on('SIGTERM', () => shutdown(daemon, 'SIGTERM'));
  process.on('SIGINT', () => shutdown(daemon, 'SIGINT'));
  // As virtiofsd (and this daemon under its namespace supervisor, which passes SIGHUP on): an orderly stop.
  process.on('SIGHUP', () => shutdown(daemon, 'SIGHUP'));
  await daemon.run();
  log.info('Client disconnected, shutting down');
  await stopWithin(daemon, STOP_GRACE_MS);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof FsUsageError) process.stderr.write(`kumo-virtiofsd: ${e.message}\n${USAGE}\n`);
    else if (e instanceof VhostUserSocketError || e instanceof SetupError) process.stderr.write(`kumo-virtiofsd: ${e.message}\n`);
    else if (e instanceof KumoError) log.error({ err: e, ...e.context }, e.message);
    else log.error({ err: e }, 'fatal');
    process.exit(1);
  },
);
