import { afterEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FuseClient, FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { namespacesWanted } from '../../backends/virtiofsd/namespaces.js';
import { parseIdRange } from '../../backends/virtiofsd/idmap.js';
import { errCode } from './daemons.js';
import { unixListen } from '../../protocol/sys/socket.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { asNobody, NOBODY, nobodyDirs } from '../unprivileged.js';

// virtiofsd started unprivileged with its default --sandbox=namespace runs in a user namespace of its own (its
// uid and gid kept inside, or --uid-map/--gid-map ranges set up with newuidmap/newgidmap). Here the daemon runs as
// uid 65534 with nothing but what an ordinary user has.
const O_RDWR = 2;
const O_CREAT = 0o100;
const args = (...extra: string[]): string[] => ['--socket-path=/s', '--shared-dir=/d', ...extra];

const root = process.getuid?.() === 0;
const have = (tool: string): boolean => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
const usernsWorks = root && have('unshare') && have('setpriv') &&
  spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '--user', 'true']).status === 0;
const newidmap = have('newuidmap') && have('newgidmap') && existsSync('/etc/subuid') && existsSync('/etc/subgid');
if (!root) console.log('user namespace tests skipped: starting a daemon as another user needs root');
else if (!usernsWorks) console.log('user namespace tests skipped: this kernel does not let an unprivileged user create a user namespace');
if (usernsWorks && !newidmap) console.log('--uid-map test skipped: newuidmap/newgidmap (package uidmap) or /etc/subuid, /etc/subgid missing');

describe('--uid-map / --gid-map', () => {
  it("reads virtiofsd's :INSIDE:OUTSIDE:COUNT: ranges, repeatable, with any non-alphanumeric delimiter", () => {
    expect(parseIdRange('uid-map', ':0:100000:65536:')).toEqual({ inside: 0, outside: 100000, count: 65536 });
    expect(parseIdRange('gid-map', '/1/2/3/')).toEqual({ inside: 1, outside: 2, count: 3 });
    const cfg = parseArgs(args('--uid-map=:0:1000:1:', '--uid-map', ':1:100000:65536:', '--gid-map=:0:1000:1:'));
    expect(cfg.uidMap).toEqual([{ inside: 0, outside: 1000, count: 1 }, { inside: 1, outside: 100000, count: 65536 }]);
    expect(cfg.gidMap).toEqual([{ inside: 0, outside: 1000, count: 1 }]);
    for (const bad of [':0:1:', '0:1:2', ':0:1:2', ':a:1:2:', 'x0x1x2x', ':0:1:2:3:', ':-1:1:2:', ':', '']) {
      expect(() => parseIdRange('uid-map', bad), bad).toThrow(/--uid-map must be :INSIDE:OUTSIDE:COUNT:/);
    }
    expect(() => parseIdRange('gid-map', ':0:1:0:')).toThrow(/empty or runs past 2\^32/);
    expect(() => parseIdRange('gid-map', ':4294967295:0:2:')).toThrow(/empty or runs past 2\^32/);
  });

  it.skipIf(!root)('are refused for a root daemon and for a sandbox other than namespace, as virtiofsd refuses them', () => {
    const plan = { uidMap: [{ inside: 0, outside: 1000, count: 1 }], gidMap: [], listenFd: null };
    expect(() => namespacesWanted('namespace', plan)).toThrow(/apply only to an unprivileged daemon with --sandbox=namespace/);
    // Root needs no user namespace; the pid namespace is for every --sandbox=namespace, as in virtiofsd.
    expect(namespacesWanted('namespace', { ...plan, uidMap: [] })).toEqual({ user: false, pid: true });
    expect(namespacesWanted('chroot', { ...plan, uidMap: [] })).toBeNull();
  });
});

interface Unprivileged {
  /** The supervisor: `unshare --mount ... setpriv ... node kumo-virtiofsd.js`, i.e. the process a launcher starts. */
  proc: ChildProcess;
  sock: string;
  share: string;
  stderr: () => string;
  /** Resolves once every process holding the stderr pipe (supervisor, daemon) is gone and all it wrote was read. */
  stderrClosed?: Promise<void>;
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** kumo-virtiofsd as uid 65534 with no capabilities, as an ordinary user would start it (see asNobody). */
function startUnprivileged(extra: string[], subids?: string): Unprivileged {
  const base = mkdtempSync('/tmp/kumo-fs-userns-');
  const { work, share } = nobodyDirs(base);
  const sock = join(work, 's.sock');
  const [cmd, ...argv] = asNobody(base, 'bin/kumo-virtiofsd.js', [`--socket-path=${sock}`, `--shared-dir=${share}`, ...extra], subids);
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'info' } });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const stderrClosed = new Promise<void>((r) => proc.stderr!.once('close', () => r()));
  cleanups.push(() => {
    proc.kill('SIGKILL');
    const pid = daemonPid(sock);
    if (pid !== null) spawnSync('kill', ['-9', String(pid)]);
    rmSync(base, { recursive: true, force: true });
  });
  return { proc, sock, share, stderr: () => err, stderrClosed };
}

function daemonPid(sock: string): number | null {
  try {
    return Number(readFileSync(`${sock}.pid`, 'utf8').trim());
  } catch {
    return null;
  }
}

/** An INIT'ed client; closing `t` is the front-end leaving. */
async function connect(d: Unprivileged): Promise<{ c: FuseClient; t: VirtioFsTransport }> {
  let t: VirtioFsTransport;
  try {
    t = await VirtioFsTransport.connect(d.sock, 20_000);
  } catch (e) {
    // Why the daemon never listened is in what it wrote, not in the connect error.
    throw new Error(`${(e as Error).message}; daemon exit ${d.proc.exitCode ?? d.proc.signalCode ?? 'none yet'}, stderr:\n${d.stderr()}`);
  }
  cleanups.push(() => t.close());
  const c = new FuseClient(t);
  await c.init();
  return { c, t };
}

const exited = (c: ChildProcess): Promise<number | null> =>
  c.exitCode !== null ? Promise.resolve(c.exitCode) : new Promise((r) => c.once('exit', (code) => r(code)));

const owner = (p: string): string => {
  const st = lstatSync(p);
  return `${st.uid}:${st.gid}`;
};

const pidNs = (pid: number | 'self'): string => readlinkSync(`/proc/${pid}/ns/pid`);
const BIN = fileURLToPath(new URL('../../bin/kumo-virtiofsd.js', import.meta.url));

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));

describe.skipIf(!usernsWorks)('an unprivileged kumo-virtiofsd with --sandbox=namespace', () => {
  it('serves from its own user namespace with its own IDs inside, and ends with the front-end', async () => {
    const d = startUnprivileged([]);
    const { c, t } = await connect(d);
    const pid = daemonPid(d.sock)!;
    expect(pid).not.toBe(d.proc.pid);
    expect(readlinkSync(`/proc/${pid}/ns/user`)).not.toBe(readlinkSync('/proc/self/ns/user'));
    expect(pidNs(pid)).not.toBe(pidNs('self'));
    expect(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/)).toEqual([`${NOBODY}`, `${NOBODY}`, '1']);
    expect(readFileSync(`/proc/${pid}/setgroups`, 'utf8').trim()).toBe('deny');
    // The namespace sandbox itself, not the chroot fallback: the request thread has a mount namespace of its own.
    const mnt = new Set(readdirSync(`/proc/${pid}/task`).map((t) => readlinkSync(`/proc/${pid}/task/${t}/ns/mnt`)));
    expect(mnt.size).toBe(2);
    expect(d.stderr()).toContain('"sandbox":"namespace","msg":"sandbox entered"');

    // The guest's root creates as the daemon's user, and sees that owner.
    const f = await c.create(FUSE_ROOT_ID, 'by-root', O_RDWR | O_CREAT, 0o100644);
    await c.release(f.entry.nodeid, f.fh);
    expect(owner(join(d.share, 'by-root'))).toBe(`${NOBODY}:${NOBODY}`);
    expect([f.entry.attr.uid, f.entry.attr.gid]).toEqual([NOBODY, NOBODY]);
    // Another guest uid has no ID in the namespace: an error for that request, and the daemon goes on.
    c.caller = { uid: 1000, gid: 1000, pid: 1 };
    expect(await errCode(c.mkdir(FUSE_ROOT_ID, 'by-1000', 0o755))).toBe('EINVAL');
    expect(existsSync(join(d.share, 'by-1000'))).toBe(false);
    c.caller = { uid: 0, gid: 0, pid: 1 };
    await c.mkdir(FUSE_ROOT_ID, 'after', 0o755);
    expect(owner(join(d.share, 'after'))).toBe(`${NOBODY}:${NOBODY}`);

    t.close();
    expect(await exited(d.proc)).toBe(0);
    expect(alive(pid)).toBe(false);
  }, 60_000);

  it.skipIf(!newidmap)('maps --uid-map/--gid-map ranges through newuidmap and newgidmap, and refuses ranges /etc/subuid does not grant', async () => {
    const maps = ['--uid-map=:0:65534:1:', '--uid-map=:1:200000:65536:', '--gid-map=:0:65534:1:', '--gid-map=:1:200000:65536:'];
    const d = startUnprivileged(maps);
    chmodSync(d.share, 0o777); // owned by uid 0 inside: other guest users may create in it
    const { c, t } = await connect(d);
    const pid = daemonPid(d.sock)!;
    expect(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split('\n').map((l) => l.trim().split(/\s+/).join(' ')))
      .toEqual(['0 65534 1', '1 200000 65536']);
    c.caller = { uid: 1000, gid: 1001, pid: 1 };
    const f = await c.create(FUSE_ROOT_ID, 'by-1000', O_RDWR | O_CREAT, 0o100644);
    await c.release(f.entry.nodeid, f.fh);
    expect(owner(join(d.share, 'by-1000'))).toBe('200999:201000');
    expect([f.entry.attr.uid, f.entry.attr.gid]).toEqual([1000, 1001]);
    c.caller = { uid: 0, gid: 0, pid: 1 };
    const r = await c.mkdir(FUSE_ROOT_ID, 'by-root', 0o755);
    expect(owner(join(d.share, 'by-root'))).toBe(`${NOBODY}:${NOBODY}`);
    expect([r.attr.uid, r.attr.gid]).toEqual([0, 0]);
    t.close();
    expect(await exited(d.proc)).toBe(0);

    const refused = startUnprivileged(['--uid-map=:0:65534:1:', '--uid-map=:1:300000:10:']);
    expect(await exited(refused.proc)).toBe(1);
    expect(refused.stderr()).toMatch(/newuidmap refused the --uid-map ranges \(see \/etc\/subuid\)/);
    expect(existsSync(refused.sock)).toBe(false);
  }, 60_000);

  it('passes SIGTERM on to the daemon, and the daemon stops in order when its supervisor is killed', async () => {
    const first = startUnprivileged([]);
    await connect(first);
    const pid1 = daemonPid(first.sock)!;
    first.proc.kill('SIGTERM');
    expect(await exited(first.proc)).toBe(0);
    expect(alive(pid1)).toBe(false);

    const second = startUnprivileged([]);
    await connect(second);
    const pid2 = daemonPid(second.sock)!;
    second.proc.kill('SIGKILL');
    // The daemon holds the stderr pipe too: its close means the daemon is gone and its last words were read.
    await Promise.race([second.stderrClosed, new Promise((r) => setTimeout(r, 20_000))]);
    for (let i = 0; i < 100 && alive(pid2); i++) await new Promise((r) => setTimeout(r, 50));
    expect(alive(pid2)).toBe(false);
    // One orderly stop, not a signal per thread of the dying supervisor.
    expect(second.stderr()).toContain('"why":"supervisor exited","msg":"shutting down"');
    expect(second.stderr()).not.toMatch(/failed|did not stop/);
  }, 60_000);

  it('passes a listening socket from its launcher (--fd, as libvirt gives it) on into the namespace, whatever its number', async () => {
    for (const n of [3, 4]) {
      const base = mkdtempSync('/tmp/kumo-fs-userns-');
      const { work, share } = nobodyDirs(base);
      const sock = join(work, 'inherited.sock');
      const lfd = unixListen(sock);
      const stdio: StdioOptions = ['ignore', 'ignore', 'pipe', 'ignore', 'ignore'];
      stdio[n] = lfd;
      const [cmd, ...argv] = asNobody(base, 'bin/kumo-virtiofsd.js', [`--fd=${n}`, `--shared-dir=${share}`]);
      const proc = spawn(cmd, argv, { stdio, env: { ...process.env, KUMO_LOG: 'warn' } });
      closeQuiet(lfd);
      cleanups.push(() => {
        proc.kill('SIGKILL');
        rmSync(base, { recursive: true, force: true });
      });
      const { c, t } = await connect({ proc, sock, share, stderr: () => '' });
      await c.mkdir(FUSE_ROOT_ID, `via-fd${n}`, 0o755);
      expect(owner(join(share, `via-fd${n}`)), `--fd=${n}`).toBe(`${NOBODY}:${NOBODY}`);
      t.close();
      expect(await exited(proc), `--fd=${n}`).toBe(0);
    }
  }, 60_000);

  it('an unprivileged --sandbox=chroot or --uid-map with another sandbox is a clear error', async () => {
    const chroot = startUnprivileged(['--sandbox=chroot']);
    expect(await exited(chroot.proc)).toBe(1);
    expect(chroot.stderr()).toContain('--sandbox=chroot needs CAP_SYS_ADMIN (namespace) or CAP_SYS_CHROOT (chroot)');
    const maps = startUnprivileged(['--sandbox=none', '--uid-map=:0:65534:1:']);
    expect(await exited(maps.proc)).toBe(1);
    expect(maps.stderr()).toContain('--uid-map and --gid-map apply only to an unprivileged daemon with --sandbox=namespace');
  }, 60_000);
});

// virtiofsd's namespace sandbox puts the daemon in a pid namespace of its own: it sees none of the host's processes,
// and can signal none. A root daemon gets one too (made by util-linux's unshare, the daemon is its init).
describe.skipIf(!root)('a root daemon with --sandbox=namespace', () => {
  /** kumo-virtiofsd as root with the default sandbox; `env` on top of the usual; `prepare` runs on the share first. */
  function startRoot(env: Record<string, string> = {}, prepare?: (share: string) => void, ownGroup = false): Unprivileged {
    const base = mkdtempSync('/tmp/kumo-fs-pidns-');
    const share = join(base, 'share');
    mkdirSync(share);
    prepare?.(share);
    const sock = join(base, 's.sock');
    const proc = spawn(process.execPath, [BIN, `--socket-path=${sock}`, `--shared-dir=${share}`],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'info', ...env }, detached: ownGroup });
    let err = '';
    proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const stderrClosed = new Promise<void>((r) => proc.stderr!.once('close', () => r()));
    cleanups.push(() => {
      proc.kill('SIGKILL');
      const pid = daemonPid(sock);
      if (pid !== null && pid !== proc.pid) spawnSync('kill', ['-9', String(pid)]);
      spawnSync('umount', ['-R', '-l', share]);
      rmSync(base, { recursive: true, force: true });
    });
    return { proc, sock, share, stderr: () => err };
  }

  it('serves from a pid namespace of its own, as its init; the pid file names it as the host sees it', async () => {
    const d = startRoot();
    const { c } = await connect(d);
    await c.mkdir(FUSE_ROOT_ID, 'made', 0o755);
    expect(owner(join(d.share, 'made'))).toBe('0:0');
    const pid = daemonPid(d.sock)!;
    expect(pid).not.toBe(d.proc.pid);
    expect(pidNs(pid)).not.toBe(pidNs('self'));
    // Its pid here, then 1 in its own namespace.
    expect(/^NStgid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1].split(/\s+/)).toEqual([String(pid), '1']);
    // Init of a pid namespace gets only the signals it handles: the supervisor passes them on over the socket.
    d.proc.kill('SIGHUP');
    expect(await exited(d.proc)).toBe(0);
    expect(alive(pid)).toBe(false);
    expect(d.stderr()).toContain('"why":"SIGHUP","msg":"shutting down"');
  }, 60_000);

  it("stops in order on a terminal's ^C (SIGINT to the whole process group), not at once on a second delivery", async () => {
    const d = startRoot({}, undefined, true);
    await connect(d);
    const pid = daemonPid(d.sock)!;
    process.kill(-d.proc.pid!, 'SIGINT');
    expect(await exited(d.proc)).toBe(0);
    expect(alive(pid)).toBe(false);
    expect(d.stderr().match(/"msg":"shutting down"/g)).toHaveLength(1);
    expect(d.stderr()).toContain('"why":"SIGINT","msg":"shutting down"');
  }, 60_000);

  it('serves without a pid namespace, saying so, where none can be made (no unshare on PATH)', async () => {
    const d = startRoot({ PATH: '/nonexistent' });
    const { c, t } = await connect(d);
    await c.mkdir(FUSE_ROOT_ID, 'made', 0o755);
    expect(daemonPid(d.sock)).toBe(d.proc.pid);
    expect(pidNs(d.proc.pid!)).toBe(pidNs('self'));
    expect(d.stderr()).toContain('unshare (util-linux) is not installed: serving without a pid namespace');
    t.close();
    expect(await exited(d.proc)).toBe(0);
  }, 60_000);

  it('sees a mount added under a shared-propagation share while it runs, as Kata adds volumes to its shared directory', async () => {
    const d = startRoot({}, (share) => {
      for (const cmd of [['--bind', share, share], ['--make-rshared', share]]) {
        const r = spawnSync('mount', cmd, { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
      }
      mkdirSync(join(share, 'late'));
    });
    const { c } = await connect(d);
    const r = spawnSync('mount', ['-t', 'tmpfs', 'kumo-late', join(d.share, 'late')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    writeFileSync(join(d.share, 'late', 'volume-file'), 'v');
    const late = await c.lookup(FUSE_ROOT_ID, 'late');
    expect(late.attr.flags & 1 /* FUSE_ATTR_SUBMOUNT */).toBe(1);
    expect((await c.lookup(late.nodeid, 'volume-file')).attr.size).toBe(1);
  }, 60_000);
});
