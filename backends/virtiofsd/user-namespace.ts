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
const SYNC_ENV = 'KUMO_VIRTIOFSD_USERNS_FD';
const INSIDE = 0x72; // 'r': the daemon is in its new user namespace
const MAPPED = 0x67; // 'g': the supervisor wrote the ID maps

/**
 * In a daemon the supervisor started: says it is inside the new user namespace and waits until the supervisor has
 * written the ID maps (uid/gid and the capabilities in use need them). Afterwards `onSupervisorGone` runs once if
 * the supervisor ends (its end of the socket closes), so that a supervisor killed outright takes the daemon with it.
 * False in any other process.
 */
export function joinUserNamespace(onSupervisorGone: () => void): boolean {
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
  if (n !== 1 || b[0] !== MAPPED) throw new FsConfigError('the supervisor did not set up the user namespace');
  // Not PR_SET_PDEATHSIG: the kernel sends that again each time the daemon passes to another of the dying
  // supervisor's threads, and a second signal means "exit at once".
  const link = new Socket({ fd, readable: true, writable: false });
  link.once('close', onSupervisorGone);
  link.on('error', () => undefined);
  link.resume();
  link.unref();
  return true;
}

export interface UserNamespacePlan {
  uidMap: IdRange[];
  gidMap: IdRange[];
  /** --fd: the listening socket, passed on at the same number. */
  listenFd: number | null;
}

/**
 * Whether this process must run the daemon in a user namespace, as virtiofsd does when started unprivileged
 * with --sandbox=namespace; refuses --uid-map/--gid-map where virtiofsd does (root, or another sandbox).
 */
export function userNamespaceWanted(sandbox: SandboxMode, plan: UserNamespacePlan): boolean {
  const root = process.geteuid?.() === 0;
  const maps = plan.uidMap.length + plan.gidMap.length > 0;
  if (maps && (root || sandbox !== 'namespace')) {
    throw new FsConfigError('--uid-map and --gid-map apply only to an unprivileged daemon with --sandbox=namespace, which runs in its ' +
      'own user namespace (to translate IDs otherwise, use --translate-uid and --translate-gid)');
  }
  return !root && sandbox === 'namespace';
}

/**
 * Runs the daemon again in a new user namespace and stays outside as its supervisor, as virtiofsd's parent does.
 * CLONE_NEWUSER refuses a multithreaded caller, and Node always has threads, so the namespace comes from util-linux's
 * `unshare --user --keep-caps` (the daemon keeps the capabilities it gets there); this process then writes the ID maps
 * (its own IDs, or --uid-map/--gid-map through newuidmap/newgidmap), passes signals on, and returns the daemon's status.
 * Killed outright, it takes the daemon with it: the socket between them closes.
 */
export async function superviseInUserNamespace(argv: string[], plan: UserNamespacePlan): Promise<number> {
  const syncFd = plan.listenFd === 3 ? 4 : 3;
  const stdio: StdioOptions = ['inherit', 'inherit', 'inherit'];
  while (stdio.length <= Math.max(syncFd, plan.listenFd ?? 0)) stdio.push('ignore');
  stdio[syncFd] = 'pipe';
  if (plan.listenFd !== null) stdio[plan.listenFd] = plan.listenFd;
  const child = spawn('unshare', ['--user', '--keep-caps', '--', process.execPath, ...process.execArgv, process.argv[1], ...argv], {
    stdio, env: { ...process.env, [SYNC_ENV]: String(syncFd) },
  });
  const exit = new Promise<number>((resolve) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      log.error(e.code === 'ENOENT' ? 'unshare (util-linux) is not installed: an unprivileged --sandbox=namespace needs it; pass --sandbox=none instead'
        : `cannot start unshare: ${e.message}`);
      resolve(1);
    });
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? constants.signals[signal] : 0)));
  });
  const sync = child.stdio[syncFd] as Duplex | null;
  if (sync === null || !(await inside(sync, exit))) {
    log.error('the daemon did not reach its user namespace (are unprivileged user namespaces disabled?); pass --sandbox=none instead');
    child.kill('SIGKILL');
    await exit;
    return 1;
  }
  try {
    writeIdMaps(child.pid!, 'uid', plan.uidMap, process.geteuid!());
    writeIdMaps(child.pid!, 'gid', plan.gidMap, process.getegid!());
  } catch (e) {
    log.error((e as Error).message);
    child.kill('SIGKILL');
    await exit;
    return 1;
  }
  // Kept open: the daemon stops when it closes, i.e. when this process ends.
  sync.write(Buffer.of(MAPPED));
  log.info({ daemonPid: child.pid, uidMap: plan.uidMap, gidMap: plan.gidMap }, 'daemon running in its own user namespace');
  const pass = (sig: NodeJS.Signals): void => void child.kill(sig);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, pass);
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
