// Back-ends whose log cannot be written (stderr on a full disk, /dev/full, a closed pipe) keep serving, as
// qemu-storage-daemon and virtiofsd do: pino's destination threw ENOSPC out of the code that logged, so the first
// "front-end connected" (or any warning in a queue worker) ended the back-end and its guest's disk with it.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { kumoVu } from './kumo-vu-run.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
let dir = '';
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function startLogging(args: string[], sock: string, stderr: 'full' | 'closed-pipe'): Promise<ChildProcess> {
  const err = stderr === 'full' ? openSync('/dev/full', 'w') : 'pipe';
  const c = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', err], env: { ...process.env, KUMO_LOG: 'debug' } });
  if (typeof err === 'number') closeSync(err);
  else c.stderr!.destroy();
  children.push(c);
  for (let i = 0; i < 150 && !existsSync(sock) && c.exitCode === null; i++) await new Promise((r) => setTimeout(r, 100));
  expect(c.exitCode).toBe(null);
  return c;
}

describe.each(['full', 'closed-pipe'] as const)('back-ends with stderr %s', (stderr) => {
  it('kumo-vhost-user-blk serves two front-ends in turn', async () => {
    dir = mkdtempSync('/tmp/kumo-stderr-');
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(4 << 20));
    const sock = join(dir, 'blk.sock');
    const c = await startLogging([join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${sock},num_queues=2`], sock, stderr);
    for (let i = 0; i < 2; i++) expect(kumoVu(['blk', '--socket', sock, 'verify'])).toMatch(/RESULT: PASS/);
    expect(c.exitCode).toBe(null);
  }, 60_000);

  it('kumo-virtiofsd serves, its request thread logging at debug level', async () => {
    dir = mkdtempSync('/tmp/kumo-stderr-');
    const share = join(dir, 'share');
    mkdirSync(share);
    const sock = join(dir, 'fs.sock');
    await startLogging([join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'], sock, stderr);
    const out = kumoVu(['fs', '--socket', sock, 'run', '-'], 'write /a.txt hi\ncat /a.txt\nstat /missing\n');
    expect(out).toMatch(/ok "hi"/);
    expect(out).toMatch(/err ENOENT/);
  }, 60_000);
});
