// A back-end started in a working directory that was removed (a deleted build or job directory, a service whose
// WorkingDirectory went away): Node starts no worker thread there, and every back-end died at start.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { kumoVu } from './kumo-vu-run.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
let dir = '';
let child: ChildProcess | null = null;
afterEach(() => {
  child?.kill('SIGKILL');
  child = null;
  rmSync(dir, { recursive: true, force: true });
});

/** Runs `args` under node from inside a directory removed just before. */
function inRemovedDir(args: string[]): { child: ChildProcess; output: () => string } {
  const gone = join(dir, 'gone');
  mkdirSync(gone);
  const c = spawn('sh', ['-c', 'cd "$1" && rmdir "$1" && shift && exec "$@"', 'sh', gone, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KUMO_LOG: 'warn' } });
  let out = '';
  c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  child = c;
  return { child: c, output: () => out };
}

async function socketOf(path: string, output: () => string): Promise<void> {
  for (let i = 0; i < 150 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 100));
  expect(existsSync(path), output()).toBe(true);
}

describe('back-ends started in a removed working directory', () => {
  it('kumo-vhost-user-blk serves', async () => {
    dir = mkdtempSync('/tmp/kumo-removed-cwd-');
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(4 << 20));
    const sock = join(dir, 'blk.sock');
    const { output } = inRemovedDir([join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${sock},num_queues=2`]);
    await socketOf(sock, output);
    const out = kumoVu(['blk', '--socket', sock, 'verify']);
    expect(out, output()).toMatch(/RESULT: PASS/);
  }, 60_000);

  it('kumo-virtiofsd serves, in every sandbox mode', async () => {
    dir = mkdtempSync('/tmp/kumo-removed-cwd-');
    const share = join(dir, 'share');
    mkdirSync(share);
    for (const sandbox of process.getuid?.() === 0 ? ['none', 'chroot', 'namespace'] : ['none']) {
      const sock = join(dir, `fs-${sandbox}.sock`);
      const { output } = inRemovedDir([join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, `--sandbox=${sandbox}`]);
      await socketOf(sock, output);
      const out = kumoVu(['fs', '--socket', sock, 'run', '-'], `write /${sandbox}.txt hi\ncat /${sandbox}.txt\n`);
      expect(out, `${sandbox}: ${output()}`).toMatch(/hi/);
      child!.kill('SIGKILL');
    }
  }, 60_000);

  it('kumo-virtiofsd refuses a relative --shared-dir there (.. would have shared the host\'s /)', async () => {
    dir = mkdtempSync('/tmp/kumo-removed-cwd-');
    const { child: c, output } = inRemovedDir([join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${join(dir, 'fs.sock')}`, '--shared-dir=..', '--sandbox=none']);
    const code = await new Promise<number | null>((r) => c.once('exit', r));
    expect(code, output()).toBe(1);
    expect(output()).toMatch(/^kumo-virtiofsd: the working directory was removed, so the relative path \.\. names nothing/m);
  }, 30_000);

  it('a relative socket path there is refused in one line (it would name a file under / instead)', async () => {
    dir = mkdtempSync('/tmp/kumo-removed-cwd-');
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(1 << 20));
    const { child: c, output } = inRemovedDir([join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=blk.sock`]);
    const code = await new Promise<number | null>((r) => c.once('exit', r));
    expect(code, output()).toBe(1);
    expect(output()).toMatch(/^kumo-vhost-user-blk: the working directory was removed, so the relative path blk.sock names nothing/m);
    expect(existsSync('/blk.sock')).toBe(false);
  }, 30_000);
});
