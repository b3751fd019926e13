import { spawn, spawnSync, type StdioOptions } from 'node:child_process';
import { readSync, writeFileSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { constants } from 'node:os';
import type { Duplex } from 'node:stream';
import { logger } from '../../protocol/log.js';
import { FsConfigError } from './errors.js';
import type { SandboxMode } from './options.js';
import type { IdRange } from './idmap.js';

const log = logger('virtiofsd');

/** Names the inherited socket the supervisor and the daemon it started talk over (set only in that daemon). */
const SYNC_ENV = 'KUMO_VIRTIOFSD_SUPERVISOR_FD';
const INSIDE = 0x72; // 'r': the daemon is in its new namespaces
const MAPPED = 0x67; // 'g': the supervisor wrote the ID maps (if any): go on
/**
 * Signals the supervisor gets, passed on as these bytes: the daemon may be init of its pid namespace, which gets only
 * signals it handles (and unshare's parent, between the two, blocks them).
 */
const SIGNAL_BYTE = { SIGTERM: 'T', SIGINT: 'I', SIGHUP: 'H' } as const;
const SIGNAL_OF_BYTE = new Map(Object.entries(SIGNAL_BYTE).map(([sig, byte]) => [byte as string, sig as NodeJS.Signals]));

/** What a daemon started by a supervisor hears from it. */
export interface SupervisorEvents {
  /** The supervisor got this signal. */
  signal(sig: NodeJS.Signals): void;
  /** The supervisor ended (its end of the socket closed): a supervisor killed outright takes the daemon with it. */
  gone(): void;
}

/**
 * In a daemon a supervisor started: says it is inside its new namespaces and waits until the supervisor has written
 * the ID maps (uid/gid and the capabilities in use need them), then passes the supervisor's signals and its end to
 * `events`. False in any other process.
 */
export function joinSupervisor(events: SupervisorEvents): boolean {
  const v = process.env[SYNC_ENV];
  if (v === undefined) return false;
  delete process.env[SYNC_ENV];
  const fd = Number(v);
  writeSync(fd, Buffer.of(INSIDE));
  const b = Buffer.alloc(1);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let n = 0;
  for (;;) {
    try {
      n = readSync(fd, b);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(nap, 0, 0, 2);
    }
  }
  // The supervisor has said why on stderr.
  if (n !== 1 || b[0] !== MAPPED) throw new FsConfigError('the supervisor did not set up the namespaces');
  // Not PR_SET_PDEATHSIG: the kernel sends that again each time the daemon passes to another of the dying
  // supervisor's threads, and a second signal means "exit at once".
  const link = new Socket({ fd, readable: true, writable: false });
  link.once('close', () => events.gone());
  link.on('data', (d: Buffer) => {
    for (const c of d.toString('latin1')) {
      const sig = SIGNAL_OF_BYTE.get(c);
      if (sig !== undefined) events.signal(sig);
    }
  });
  link.on('error', () => undefined);
  link.unref();
  return true;
}

export interface NamespacePlan {
  uidMap: IdRange[];
  gidMap: IdRange[];
  /** --fd: the listening socket, passed on at the same number. */
  listenFd: number | null;
}

/** The namespaces the daemon is run in, beyond the mount and network namespaces its request thread makes itself. */
export interface Namespaces {
  /** A user namespace: the daemon was started unprivileged. */
  user: boolean;
  /** A pid namespace, where the daemon is init and sees none of the host's processes. */
  pid: boolean;
}

/**
 * The namespaces this process must run the daemon in, as virtiofsd does with --sandbox=namespace: a pid namespace, and
 * a user namespace too when started unprivileged; null when the daemon runs here. Refuses --uid-map/--gid-map where
 * virtiofsd does (root, or another sandbox).
 */
export function namespacesWanted(sandbox: SandboxMode, plan: NamespacePlan): Namespaces | null {
  const root = process.geteuid?.() === 0;
  const maps = plan.uidMap.length + plan.gidMap.length > 0;
  if (maps && (root || sandbox !== 'namespace')) {
    throw new FsConfigError('--uid-map and --gid-map apply only to an unprivileged daemon with --sandbox=namespace, which runs in its ' +
      'own user namespace (to translate IDs otherwise, use --translate-uid and --translate-gid)');
  }
  return sandbox === 'namespace' ? { user: !root, pid: true } : null;
}

/**
 * Runs the daemon again in new namespaces and stays outside as its supervisor, as virtiofsd's parent does. CLONE_NEWUSER
 * refuses a multithreaded caller, Node always has threads, and CLONE_NEWPID moves only the caller's children, so the
 * namespaces come from util-linux's `unshare` (`--user --keep-caps`: the daemon keeps the capabilities it gets there;
 * `--pid --fork`: the daemon is init of its pid namespace). This process then writes the ID maps (its own IDs, or
 * --uid-map/--gid-map through newuidmap/newgidmap), passes signals on over the socket between them, and returns the
 * daemon's status. Killed outright, it takes the daemon with it: the socket closes.
 * Resolves null when a root daemon's pid namespace cannot be made (no util-linux, or no CAP_SYS_ADMIN): the caller
 * then serves without one, as the namespace sandbox falls back to chroot.
 */
export async function superviseInNamespaces(argv: string[], plan: NamespacePlan, ns: Namespaces): Promise<number | null> {
  const syncFd = plan.listenFd === 3 ? 4 : 3;
  const stdio: StdioOptions = ['inherit', 'inherit', 'inherit'];
  while (stdio.length <= Math.max(syncFd, plan.listenFd ?? 0)) stdio.push('ignore');
  stdio[syncFd] = 'pipe';
  if (plan.listenFd !== null) stdio[plan.listenFd] = plan.listenFd;
  const flags = [...(ns.user ? ['--user', '--keep-caps'] : []), ...(ns.pid ? ['--pid', '--fork'] : [])];
  // Its own process group: a terminal's ^C reaches this process only, which passes it on once.
  const child = spawn('unshare', [...flags, '--', process.execPath, ...process.execArgv, process.argv[1], ...argv], {
    stdio, env: { ...process.env, [SYNC_ENV]: String(syncFd) }, detached: true,
  });
  let missing = false;
  const exit = new Promise<number>((resolve) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      missing = e.code === 'ENOENT';
      if (ns.user) {
        log.error(missing ? 'unshare (util-linux) is not installed: an unprivileged --sandbox=namespace needs it; pass --sandbox=none instead'
          : `cannot start unshare: ${e.message}`);
      }
      resolve(1);
    });
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? constants.signals[signal] : 0)));
  });
  const sync = child.stdio[syncFd] as Duplex | null;
  if (sync === null || !(await inside(sync, exit))) {
    child.kill('SIGKILL');
    await exit;
    if (!ns.user) {
      log.warn(missing ? 'unshare (util-linux) is not installed: serving without a pid namespace' : 'no pid namespace could be made: serving without one');
      return null;
    }
    log.error('the daemon did not reach its user namespace (are unprivileged user namespaces disabled?); pass --sandbox=none instead');
    return 1;
  }
  if (ns.user) {
    try {
      writeIdMaps(child.pid!, 'uid', plan.uidMap, process.geteuid!());
      writeIdMaps(child.pid!, 'gid', plan.gidMap, process.getegid!());
    } catch (e) {
      log.error((e as Error).message);
      child.kill('SIGKILL');
      await exit;
      return 1;
    }
  }
  // Kept open: the daemon stops when it closes, i.e. when this process ends.
  sync.on('error', () => undefined);
  sync.write(Buffer.of(MAPPED));
  log.info({ supervisor: process.pid, ...ns, uidMap: plan.uidMap, gidMap: plan.gidMap }, 'daemon running in namespaces of its own');
  for (const [sig, byte] of Object.entries(SIGNAL_BYTE)) process.on(sig, () => void sync.write(byte));
  return exit;
}

/** Resolves true when the child says it is inside; false if it ends first. */
function inside(sync: Duplex, exit: Promise<number>): Promise<boolean> {
  return Promise.race([
    new Promise<boolean>((resolve) => {
      sync.once('data', (d: Buffer) => resolve(d[0] === INSIDE));
      sync.once('end', () => resolve(false));
      sync.once('error', () => resolve(false));
    }),
    exit.then(() => false),
  ]);
}

/**
 * The namespace's uid_map or gid_map for process `pid`. One range of our own ID the kernel lets us write (gids only
 * after setgroups is denied, so the daemon keeps no groups); anything else needs newuidmap/newgidmap and
 * /etc/subuid, /etc/subgid, as with virtiofsd. Without --uid-map the daemon keeps our ID inside, as virtiofsd does.
 */
function writeIdMaps(pid: number, kind: 'uid' | 'gid', given: IdRange[], own: number): void {
  const ranges = given.length > 0 ? given : [{ inside: own, outside: own, count: 1 }];
  if (ranges.length === 1 && ranges[0].outside === own && ranges[0].count === 1) {
    try {
      if (kind === 'gid') writeFileSync(`/proc/${pid}/setgroups`, 'deny');
      writeFileSync(`/proc/${pid}/${kind}_map`, `${ranges[0].inside} ${own} 1\n`);
      return;
    } catch (e) {
      throw new FsConfigError(`cannot write the user namespace's ${kind} map: ${(e as Error).message}`);
    }
  }
  const tool = `new${kind}map`;
  const r = spawnSync(tool, [String(pid), ...ranges.flatMap((m) => [m.inside, m.outside, m.count].map(String))], { encoding: 'utf8' });
  if (r.error) {
    throw new FsConfigError(`--${kind}-map needs ${tool} (package uidmap): ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}`);
  }
  if (r.status !== 0) throw new FsConfigError(`${tool} refused the --${kind}-map ranges (see /etc/sub${kind}): ${r.stderr.trim()}`);
}
