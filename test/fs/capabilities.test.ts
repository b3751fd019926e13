import { describe, it, expect } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseModcaps, requestThreadCaps } from '../../backends/virtiofsd/capabilities.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { FsConfigError } from '../../backends/virtiofsd/errors.js';
import { capNumber } from '../../protocol/sys/caps.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DEFAULT = ['chown', 'dac_override', 'fowner', 'fsetid', 'setgid', 'setuid', 'mknod', 'setfcap'].map(capNumber);
const mask = (caps: number[]): bigint => caps.reduce((m, c) => m | (1n << BigInt(c)), 0n);

describe('--modcaps and the request thread capability set', () => {
  it("keeps virtiofsd's set, dac_read_search for file handles, and what --modcaps adds or drops", () => {
    expect(requestThreadCaps(false, null)).toEqual([...DEFAULT].sort((a, b) => a - b));
    expect(requestThreadCaps(true, null)).toContain(capNumber('dac_read_search'));
    const m = parseModcaps('+sys_admin:-mknod:+CAP_LEASE');
    expect(m).toEqual({ add: [capNumber('sys_admin'), capNumber('lease')], drop: [capNumber('mknod')] });
    const caps = requestThreadCaps(false, m);
    expect(caps).toContain(capNumber('sys_admin'));
    expect(caps).not.toContain(capNumber('mknod'));
    for (const bad of ['sys_admin', '+nope', '', '+chown:', '*chown']) expect(() => parseModcaps(bad), bad).toThrow(FsConfigError);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--modcaps=-chown']).modcaps).toEqual({ add: [], drop: [0] });
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'modcaps=+sys_admin']).ignored).toEqual([]);
  });
});

interface ThreadConfinement {
  comm: string;
  eff: bigint;
  /** 2: a seccomp filter. */
  seccomp: number;
}

/** Effective capabilities and seccomp mode of each thread of `pid`, by thread name. */
function threadConfinement(pid: number): ThreadConfinement[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((t) => {
    try {
      const status = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      return [{
        comm: /^Name:\s*(.*)$/m.exec(status)![1], eff: BigInt('0x' + /^CapEff:\s*([0-9a-f]+)$/m.exec(status)![1]),
        seccomp: Number(/^Seccomp:\s*(\d+)$/m.exec(status)![1]),
      }];
    } catch {
      return [];
    }
  });
}

const SCRIPT = ['init', 'write f "x"', 'setxattr f trusted.k v', 'setxattr f security.k v', 'setxattr f user.k v', 'getxattr f user.k'].join('\n');
const root = process.getuid?.() === 0;
if (!root) console.log('capability tests of the daemon skipped: dropping capabilities needs a daemon that has them (root)');

describe.skipIf(!root)('kumo-virtiofsd drops capabilities on the thread that serves the guest', () => {
  async function run(extra: string[], wrap: string[] = []): Promise<{ out: string; stderr: string; threads: ThreadConfinement[] }> {
    const dir = mkdtempSync('/tmp/kumo-fs-caps-');
    try {
      mkdirSync(join(dir, 'share'));
      writeFileSync(join(dir, 'script'), SCRIPT);
      const sock = join(dir, 's.sock');
      const d = spawn(wrap[0] ?? process.execPath, [...wrap.slice(1), ...(wrap.length > 0 ? [process.execPath] : []), join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${join(dir, 'share')}`, '--xattr', ...extra],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'info' } });
      let stderr = '';
      d.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
      const exited = new Promise<void>((r) => d.once('exit', () => r()));
      for (let i = 0; i < 600 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
      // The worker thread confines itself before the socket listens. The pid file names the daemon: with the default
      // --sandbox=namespace, d is its supervisor outside the daemon's pid namespace.
      const pid = Number(readFileSync(`${sock}.pid`, 'utf8'));
      // The signal helper starts beside the worker and confines itself once it loaded (till then it does nothing).
      let threads = threadConfinement(pid);
      for (let i = 0; i < 400 && !threads.some((t) => t.comm === 'kumo-signal' && t.seccomp === 2); i++) {
        await new Promise((r) => setTimeout(r, 25));
        threads = threadConfinement(pid);
      }
      const r = spawnSync(process.execPath, [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', sock, '--connect-timeout', '15000', 'run', join(dir, 'script')],
        { encoding: 'utf8', timeout: 60_000 });
      const t = setTimeout(() => d.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
      return { out: r.stdout, stderr, threads };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const reply = (out: string, cmd: string): string => {
    const l = out.split('\n');
    return l[l.indexOf(`> ${cmd}`) + 1];
  };

  it('keeps only virtiofsd\'s set there: trusted.* and security.* xattrs are refused as QEMU\'s virtiofsd refuses them', async () => {
    const { out, stderr, threads } = await run([]);
    const worker = threads.filter((t) => t.comm === 'vu-q0');
    expect(worker).toHaveLength(1);
    expect(worker[0].eff).toBe(mask(DEFAULT));
    expect(worker[0].seccomp).toBe(2);
    // The thread that writes its interrupt eventfds has none at all, and a filter of its own.
    const helper = threads.filter((t) => t.comm === 'kumo-signal');
    expect(helper).toEqual([{ comm: 'kumo-signal', eff: 0n, seccomp: 2 }]);
    // Node's other threads (module loading, the control socket) keep theirs.
    expect(threads.filter((t) => t.comm !== 'vu-q0' && t.comm !== 'kumo-signal').every((t) => (t.eff & (1n << 21n)) !== 0n)).toBe(true);
    expect(reply(out, 'setxattr f trusted.k v')).toBe('err EPERM');
    expect(reply(out, 'setxattr f security.k v')).toBe('err EPERM');
    expect(reply(out, 'setxattr f user.k v')).toBe('ok');
    expect(reply(out, 'getxattr f user.k')).toBe('ok len=1 "v"');
    // The worker's own log line reaches stderr (it used to stay in an async buffer the blocked thread never flushed).
    expect(stderr).toMatch(/"caps":\["chown","dac_override","fowner","fsetid","setgid","setuid","mknod","setfcap"\],"msg":"virtio-fs worker ready"/);
  }, 60_000);

  it('--modcaps=+sys_admin gives trusted.* back', async () => {
    const { out, threads } = await run(['--modcaps=+sys_admin:-mknod']);
    const worker = threads.find((t) => t.comm === 'vu-q0')!;
    expect(worker.eff).toBe(mask([...DEFAULT.filter((c) => c !== capNumber('mknod')), capNumber('sys_admin')]));
    expect(reply(out, 'setxattr f trusted.k v')).toBe('ok');
  }, 60_000);

  // A container that dropped CAP_SETUID/CAP_SETGID: the daemon served, and every creation by a guest user other than
  // root failed with EPERM, with nothing said (QEMU's virtiofsd refuses to start).
  it.skipIf(spawnSync('setpriv', ['--version']).error !== undefined)('says which capabilities it lacks, and what fails without them', async () => {
    const { stderr } = await run([], ['setpriv', '--bounding-set=-setuid,-setgid', '--inh-caps=-setuid,-setgid', '--']);
    expect(stderr).toMatch(/capabilities the request thread needs are not permitted \(setgid, setuid\): creations by guest users other than root fail with EPERM/);
  }, 60_000);
});
