import { describe, it, expect } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { recvMsg, unixDgramBind, unixListen } from '../../protocol/sys/socket.js';
import { closeQuiet, setNonBlocking } from '../../protocol/sys/fd.js';

// What management tools rely on when they launch a vhost-user backend (QEMU's vhost-user.rst, "Backend
// program conventions"): libvirt probes --print-capabilities, libvirt and Kata pass a listening socket
// with --fd, and virtiofsd's --socket-group lets a group connect.
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'bin/kumo-virtiofsd.js');

const exited = (c: ChildProcess): Promise<number | null> =>
  c.exitCode !== null ? Promise.resolve(c.exitCode) : new Promise((r) => c.once('exit', (code) => r(code)));

/** Syslog datagrams from a bound socket until the queue worker says it is ready (or ~15 s). */
async function syslogUntilReady(lfd: number): Promise<string[]> {
  const lines: string[] = [];
  const buf = new Uint8Array(8192);
  for (let i = 0; i < 600 && !lines.some((l) => l.includes('virtio-fs worker ready')); i++) {
    const r = recvMsg(lfd, buf);
    if (r.n > 0) lines.push(Buffer.from(buf.subarray(0, r.n)).toString());
    else await new Promise((res) => setTimeout(res, 25));
  }
  return lines;
}

function scratch(): { dir: string; share: string } {
  const dir = mkdtempSync('/tmp/kumo-fs-conv-');
  const share = join(dir, 'share');
  mkdirSync(share);
  return { dir, share };
}

/** `kumo-vu fs run SCRIPT` against the socket; resolves with its exit code and stdout. */
function runScript(sock: string, script: string, dir: string): Promise<{ code: number | null; out: string }> {
  const file = join(dir, 'script.txt');
  writeFileSync(file, script);
  const c = spawn('node', [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', sock, '--connect-timeout', '15000', 'run', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return exited(c).then((code) => ({ code, out }));
}

describe('kumo-virtiofsd launch conventions', () => {
  it('--print-capabilities prints the vhost-user.json capabilities and exits 0 without other options', () => {
    const r = spawnSync('node', [BIN, '--print-capabilities'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ type: 'fs', features: ['separate-options'] });
  });

  it('--fd serves a listening socket inherited from the parent, and exits when the front-end leaves', async () => {
    const { dir, share } = scratch();
    const sock = join(dir, 'inherited.sock');
    const lfd = unixListen(sock);
    // Each daemon's stderr, and the step under way: a step that sticks fails with both instead of the test's timeout.
    const stderrs: string[] = [];
    let step = '';
    const start = (level = 'warn') => {
      const c = spawn('node', [BIN, '--fd=3', `--shared-dir=${share}`, '--sandbox=chroot'], {
        stdio: ['ignore', 'ignore', 'pipe', lfd], env: { ...process.env, KUMO_LOG: level },
      });
      const k = stderrs.push('') - 1;
      c.stderr!.on('data', (b: Buffer) => (stderrs[k] += b.toString()));
      return c;
    };
    const within = async <T>(what: string, p: Promise<T>, ms = 20_000): Promise<T> => {
      step = what;
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`nothing after ${ms} ms`)), ms);
      });
      try {
        return await Promise.race([p, late]);
      } finally {
        clearTimeout(timer);
      }
    };
    const d = start();
    let next: ChildProcess | null = null;
    try {
      const r = await within('first front-end', runScript(sock, 'mkdir viafd\nls .\n', dir));
      expect(r.code).toBe(0);
      expect(r.out).toContain('viafd');
      expect(existsSync(join(share, 'viafd'))).toBe(true);
      expect(await within('first daemon exits after its front-end left', exited(d))).toBe(0);
      // The listener is still the parent's (systemd socket activation): the next front-end waits on it for the next
      // daemon. The daemon shut it down for every holder, and each later front-end was refused.
      const waiting = runScript(sock, 'ls .\n', dir);
      await new Promise((r) => setTimeout(r, 300));
      next = start();
      const again = await within('a front-end that waited for the next daemon', waiting);
      expect(again.code).toBe(0);
      expect(again.out).toContain('viafd');
      // Stopped while waiting for a front-end, it leaves the parent's listener working too.
      // Once it waits (its SIGTERM handler is in place): on a loaded host a fixed 1.5 s was not always enough.
      next = start('info');
      const k = stderrs.length - 1;
      await within('the next daemon waits for a front-end', (async () => {
        for (let i = 0; i < 500 && !stderrs[k].includes('Waiting for vhost-user socket connection'); i++) await new Promise((r) => setTimeout(r, 50));
      })());
      next.kill('SIGTERM');
      expect(await within('a daemon stopped while it waited', exited(next))).toBe(0);
      next = start();
      expect((await within('a front-end after the stopped daemon', runScript(sock, 'ls .\n', dir))).code).toBe(0);
    } catch (e) {
      throw new Error(`${step}: ${(e as Error).message}\ndaemons' stderr:\n${stderrs.join('\n---\n')}`, { cause: e });
    } finally {
      d.kill('SIGKILL');
      next?.kill('SIGKILL');
      closeQuiet(lfd);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);

  it('--fd that is not a listening socket is a clear error, not a hang', async () => {
    const { dir, share } = scratch();
    const file = join(dir, 'plain');
    writeFileSync(file, 'x');
    const d = spawn('node', [BIN, '--fd=3', `--shared-dir=${share}`, '--sandbox=none'], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env: { ...process.env, KUMO_LOG: 'error' },
    });
    let err = '';
    d.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    try {
      expect(await exited(d)).toBe(1);
      expect(err).toContain('not a listening Unix stream socket');
    } finally {
      d.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it("a second daemon on a running one's --socket-path stops with an error and leaves the first serving (<socket>.pid)", async () => {
    const { dir, share } = scratch();
    const sock = join(dir, 'fs.sock');
    const argv = [BIN, `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'];
    const env = { ...process.env, KUMO_LOG: 'error' };
    const first = spawn('node', argv, { stdio: 'ignore', env });
    let next: ChildProcess | null = null;
    try {
      for (let i = 0; i < 300 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      const ino = statSync(sock).ino;
      expect(readFileSync(`${sock}.pid`, 'utf8')).toBe(`${first.pid}\n`);
      const second = spawnSync('node', argv, { encoding: 'utf8', timeout: 20_000, env });
      expect(second.status).toBe(1);
      expect(second.stderr).toContain(`another daemon (pid ${first.pid}) is serving ${sock}`);
      expect(statSync(sock).ino).toBe(ino);
      const r = await runScript(sock, 'mkdir still-first\n', dir);
      expect(r.code).toBe(0);
      expect(existsSync(join(share, 'still-first'))).toBe(true);
      expect(await exited(first)).toBe(0);
      // Its lock went with it: the next daemon takes the path (and the pid file) over.
      const n = spawn('node', argv, { stdio: 'ignore', env });
      next = n;
      for (let i = 0; i < 300 && readFileSync(`${sock}.pid`, 'utf8') !== `${n.pid}\n`; i++) await new Promise((res) => setTimeout(res, 50));
      expect(readFileSync(`${sock}.pid`, 'utf8')).toBe(`${n.pid}\n`);
      expect((await runScript(sock, 'mkdir then-next\n', dir)).code).toBe(0);
      expect(await exited(n)).toBe(0);
    } finally {
      first.kill('SIGKILL');
      next?.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('without the privileges its sandbox needs it stops at once and says what to do instead', () => {
    const { dir, share } = scratch();
    try {
      // uid 0 with no capability at all: neither a mount namespace nor chroot is possible.
      const r = spawnSync('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--', process.execPath, BIN,
        `--socket-path=${join(dir, 's.sock')}`, `--shared-dir=${share}`], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'warn' } });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain('--sandbox=namespace needs CAP_SYS_ADMIN (namespace) or CAP_SYS_CHROOT (chroot)');
      expect(r.stderr).toContain('or pass --sandbox=none');
      // The worker that failed is ended with it, not waited for.
      expect(r.stderr).not.toMatch(/did not (answer|exit in time)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('a --socket-path that cannot be bound is a clear error and the process ends (its queue workers too)', () => {
    const r = spawnSync('node', [BIN, '--socket-path=/nonexistent-kumo-dir/x.sock', '--shared-dir=/tmp', '--sandbox=none'], {
      encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'error' },
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("the socket's directory /nonexistent-kumo-dir does not exist");
  }, 30_000);

  it('a --shared-dir that is missing or not a directory is named in the error', () => {
    for (const dir of ['/nonexistent-kumo-share', '/etc/hostname']) {
      const r = spawnSync('node', [BIN, '--socket-path=/tmp/kumo-never.sock', `--shared-dir=${dir}`, '--sandbox=none'], {
        encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'error' },
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`kumo-virtiofsd: shared directory ${dir} does not exist or is not a directory`);
      // A failure at start is one line; the usage text is for a command line that does not parse.
      expect(r.stderr).not.toContain('--socket-path=');
    }
    const bad = spawnSync('node', [BIN, '--socket-path=/tmp/kumo-never.sock', '--shared-dir=/tmp', '--no-such-option'], { encoding: 'utf8', timeout: 20_000 });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('--socket-path=');
  }, 30_000);

  it('virtiofsd options it does not implement are accepted with a warning, never silently', () => {
    const r = spawnSync('node', [BIN, '--socket-path=/nonexistent-kumo-dir/x.sock', '--shared-dir=/tmp', '--sandbox=none',
      '--security-label', '--killpriv-v2', '--posix-acl', '-o', 'flock,no_flock,timeout=5,allow_root,max_idle_threads=4'],
      { encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'warn' } });
    expect(r.stderr).toContain('option allow_root is accepted for compatibility with virtiofsd but has no effect here');
    expect(r.stderr).toContain('option max_idle_threads is accepted');
    // Implemented ones say nothing.
    for (const o of ['security-label', 'killpriv-v2', 'posix-acl', 'timeout', 'flock', 'no_flock']) expect(r.stderr).not.toContain(`option ${o} `);
    expect(r.status).toBe(1);
  }, 30_000);

  it('--syslog sends the main thread\'s and the queue worker\'s logs to syslog as daemon-facility datagrams, none to stderr', async () => {
    const { dir, share } = scratch();
    const logSock = join(dir, 'log');
    const lfd = unixDgramBind(logSock);
    setNonBlocking(lfd, true);
    const d = spawn('node', [BIN, `--socket-path=${join(dir, 's.sock')}`, `--shared-dir=${share}`, '--sandbox=none', '--syslog'], {
      stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'info', KUMO_SYSLOG_SOCKET: logSock },
    });
    let stderr = '';
    d.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    try {
      const lines = await syslogUntilReady(lfd);
      const ready = lines.find((l) => l.includes('virtio-fs worker ready'));
      expect(ready).toMatch(new RegExp(`^<30>\\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d kumo-virtiofsd\\[${d.pid}\\]: \\{`));
      expect(lines.some((l) => l.includes('RLIMIT_NOFILE'))).toBe(true);
      expect(stderr).toBe('');
    } finally {
      d.kill('SIGKILL');
      closeQuiet(lfd);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('--syslog in the namespace sandbox names the daemon by the pid its pid file holds (inside its pid namespace it is 1)', async () => {
    if (process.getuid?.() !== 0) return console.log('not root: the namespace sandbox needs privileges here');
    const { dir, share } = scratch();
    const logSock = join(dir, 'log');
    const lfd = unixDgramBind(logSock);
    setNonBlocking(lfd, true);
    const sock = join(dir, 's.sock');
    const d = spawn('node', [BIN, `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=namespace', '--syslog'], {
      stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'info', KUMO_SYSLOG_SOCKET: logSock },
    });
    try {
      const lines = await syslogUntilReady(lfd);
      const pid = readFileSync(`${sock}.pid`, 'utf8').trim();
      expect(pid).not.toBe('1');
      const ready = lines.find((l) => l.includes('virtio-fs worker ready'));
      expect(ready).toContain(`kumo-virtiofsd[${pid}]: `);
    } finally {
      d.kill('SIGTERM');
      await exited(d);
      closeQuiet(lfd);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it("says it waits for the front-end in the words Kata's runtime-rs waits for on stderr; --log-level reaches the request thread", async () => {
    const { dir, share } = scratch();
    const sock = join(dir, 'virtiofsd.sock');
    // runtime-rs's argv (share_virtio_fs_standalone.rs), with a LOG_LEVEL of its own in the environment (not ours).
    const env: Record<string, string | undefined> = { ...process.env, LOG_LEVEL: 'warning' };
    delete env.KUMO_LOG;
    const d = spawn('node', [BIN, '--socket-path', sock, '--shared-dir', share, '--cache', 'auto', '--thread-pool-size=1', '-o', 'announce_submounts', '--xattr'], {
      stdio: ['ignore', 'ignore', 'pipe'], env,
    });
    let err = '';
    try {
      const ready = await new Promise<boolean>((resolve) => {
        d.stderr?.on('data', (b: Buffer) => {
          err += b.toString();
          if (err.includes('Waiting for vhost-user socket connection')) resolve(true);
        });
        d.once('exit', () => resolve(false));
        setTimeout(() => resolve(false), 20_000);
      });
      expect(ready, err).toBe(true);
    } finally {
      d.kill('SIGKILL');
    }
    // --log-level=error: nothing at info from any thread (the worker's "virtio-fs worker ready" came through).
    const q = spawn('node', [BIN, `--socket-path=${join(dir, 'q.sock')}`, `--shared-dir=${share}`, '--sandbox=none', '--log-level=error'], {
      stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'info' },
    });
    let qerr = '';
    q.stderr?.on('data', (b: Buffer) => (qerr += b.toString()));
    try {
      expect((await runScript(join(dir, 'q.sock'), 'stat /\n', dir)).code).toBe(0);
    } finally {
      q.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
    expect(qerr).not.toContain('"level":30');
  }, 60_000);

  it('--socket-group hands the socket to that group with read/write for it', async () => {
    const { dir, share } = scratch();
    const sock = join(dir, 'grp.sock');
    // Started with umask 0: the socket must not be left open to everybody (any local user would be the front-end).
    const d = spawn('sh', ['-c', 'umask 0; exec "$0" "$@"', 'node', BIN, `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none', '--socket-group=4242'], {
      stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn' },
    });
    try {
      let st = null;
      for (let i = 0; i < 600; i++) {
        st = existsSync(sock) ? statSync(sock) : null;
        if (st !== null && st.gid === 4242 && (st.mode & 0o060) === 0o060) break;
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(st?.gid).toBe(4242);
      expect((st?.mode ?? 0) & 0o777).toBe(0o760);
    } finally {
      d.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('refuses --fd with --socket-path, neither of them, and an unknown --socket-group', () => {
    const run = (args: string[]) => spawnSync('node', [BIN, ...args, '--shared-dir=/tmp'], { encoding: 'utf8' });
    const both = run(['--fd=3', '--socket-path=/tmp/x.sock']);
    expect(both.status).toBe(1);
    expect(both.stderr).toContain('--socket-path and --fd cannot be used together');
    expect(run([]).stderr).toContain('--socket-path (or --fd) is required');
    const grp = run(['--socket-path=/tmp/kumo-nogroup.sock', '--socket-group=no-such-group-kumo']);
    expect(grp.status).toBe(1);
    expect(grp.stderr).toContain('no such group "no-such-group-kumo"');
    // Refused before it takes anything: no pid file is left beside the socket path.
    expect(existsSync('/tmp/kumo-nogroup.sock.pid')).toBe(false);
  });

  it('refuses an --fd that is not open or not a listening socket before it sets up a sandbox', () => {
    // The default sandbox (namespace) would otherwise hand the fd to its supervised child first.
    const run = (fd: number) => spawnSync('node', [BIN, `--fd=${fd}`, '--shared-dir=/tmp'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const closed = run(77);
    expect(closed.status).toBe(1);
    expect(closed.stderr).toContain('--fd=77: not an open file descriptor');
    const stdin = run(0);
    expect(stdin.status).toBe(1);
    expect(stdin.stderr).toContain('--fd=0: not a listening Unix stream socket');
  });
});
