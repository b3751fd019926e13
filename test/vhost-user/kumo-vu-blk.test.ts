import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const kumoVu = join(root, 'bin/kumo-vu.js');
const ramDaemon = join(root, 'test/vhost-user/fixtures/ram-blk-daemon.ts');
let dir: string;
const children: ChildProcess[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kumo-vu-blk-'));
});

afterAll(async () => {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (existsSync(path)) return;
    if (child.exitCode !== null) throw new Error(`back-end exited early (${child.exitCode})`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`socket ${path} did not appear`);
}

function start(cmd: string, args: string[], socket: string): Promise<ChildProcess> {
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(c);
  return waitForSocket(socket, c).then(() => c);
}

async function startRamBlk(name: string, queues: number, flag?: 'minimal' | 'logs' | 'forgets'): Promise<string> {
  const socket = join(dir, `${name}.sock`);
  await start(process.execPath, ['--import', 'tsx', ramDaemon, socket, '16', String(queues), ...(flag ? [flag] : [])], socket);
  return socket;
}

function kumo(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [kumoVu, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

interface Report {
  ok: boolean;
  queuesTested: number;
  id: string | null;
  features: string[];
  checks: { name: string; ok: boolean }[];
}

describe('kumo-vu blk', () => {
  it('verify passes against the RAM blk back-end built on VhostUserDaemon (2 queues)', async () => {
    const socket = await startRamBlk('ram2', 2);
    const r = await kumo(['blk', '--socket', socket, 'verify', '--json']);
    const rep = JSON.parse(r.stdout) as Report;
    expect(rep.checks.filter((c) => !c.ok)).toEqual([]);
    expect(rep.ok).toBe(true);
    expect(r.code).toBe(0);
    expect(rep.queuesTested).toBe(2);
    expect(rep.id).toBe('kumo-ram-blk');
    expect(rep.features).toContain('EVENT_IDX');
    expect(rep.checks.some((c) => c.name.startsWith('queue 1:') && c.name.endsWith('data matches'))).toBe(true);
    // The daemon serves the next front-end after the first one left.
    const again = await kumo(['blk', '--socket', socket, 'verify']);
    expect(again.stdout).toMatch(/RESULT: PASS/);
    expect(again.code).toBe(0);
  });

  it('verify passes against a minimal back-end (no EVENT_IDX, no indirect, no MQ feature)', async () => {
    const socket = await startRamBlk('ram-min', 1, 'minimal');
    const r = await kumo(['blk', '--socket', socket, 'verify', '--json']);
    const rep = JSON.parse(r.stdout) as Report;
    expect(rep.checks.filter((c) => !c.ok)).toEqual([]);
    expect(rep.features).not.toContain('EVENT_IDX');
    expect(r.code).toBe(0);
  });

  it('verify checks the dirty log of a back-end that offers live migration, and fails one that never marks a page', async () => {
    const good = JSON.parse((await kumo(['blk', '--socket', await startRamBlk('ram-logs', 1, 'logs'), 'verify', '--json'])).stdout) as Report;
    expect(good.checks.filter((c) => c.name.startsWith('dirty log')).map((c) => c.ok)).toEqual([true, true]);
    expect(good.ok).toBe(true);
    const r = await kumo(['blk', '--socket', await startRamBlk('ram-forgets', 1, 'forgets'), 'verify', '--json']);
    const bad = JSON.parse(r.stdout) as Report;
    expect(bad.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(['dirty log: a read\'s data, its status byte and the used ring are marked']);
    expect(r.code).not.toBe(0);
    // A back-end that does not offer it is not asked.
    const plain = JSON.parse((await kumo(['blk', '--socket', await startRamBlk('ram-plain', 1), 'verify', '--json'])).stdout) as Report;
    expect(plain.checks.some((c) => c.name.startsWith('dirty log'))).toBe(false);
  });

  it('bench completes requests without errors', async () => {
    const socket = await startRamBlk('ram-bench', 2);
    const r = await kumo(['blk', '--socket', socket, 'bench', '--rw', 'randwrite', '--seconds', '1', '--queues', '2', '--iodepth', '8', '--json']);
    expect(r.code).toBe(0);
    const res = JSON.parse(r.stdout) as { ios: number; errors: number; iops: number; cpuPercent: number };
    expect(res.errors).toBe(0);
    expect(res.ios).toBeGreaterThan(0);
    expect(res.cpuPercent).toBeGreaterThan(0);
  });

  it('bench counts every request the back-end fails (writes to a read-only disk) and exits 1', async () => {
    const img = join(dir, 'ro.img');
    writeFileSync(img, Buffer.alloc(1 << 20));
    const socket = join(dir, 'ro.sock');
    await start(process.execPath, [join(root, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${socket},readonly=on`], socket);
    const r = await kumo(['blk', '--socket', socket, 'bench', '--rw', 'randwrite', '--seconds', '0.5', '--iodepth', '4', '--json']);
    expect(r.code).toBe(1);
    const res = JSON.parse(r.stdout) as { ios: number; errors: number };
    expect(res.ios).toBeGreaterThan(0);
    expect(res.errors).toBe(res.ios);
  });

  it('fails with a readable error when nothing listens', async () => {
    const r = await kumo(['blk', '--socket', join(dir, 'nobody.sock'), 'verify']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/cannot connect/);
  });

  const qsd = spawnSync('qemu-storage-daemon', ['--version']).status === 0;
  it.runIf(qsd)('verify passes against qemu-storage-daemon (file image, 2 queues)', async () => {
    const img = join(dir, 'disk.img');
    writeFileSync(img, '');
    spawnSync('truncate', ['-s', '64M', img]);
    const socket = join(dir, 'qsd.sock');
    await start('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=f,filename=${img}`,
      '--export', `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${socket},writable=on,num-queues=2`,
    ], socket);
    const r = await kumo(['blk', '--socket', socket, 'verify', '--json']);
    const rep = JSON.parse(r.stdout) as Report;
    expect(rep.checks.filter((c) => !c.ok)).toEqual([]);
    expect(rep.ok).toBe(true);
    expect(rep.queuesTested).toBe(2);
    expect(r.code).toBe(0);
  });
  if (!qsd) console.log('skipping the qemu-storage-daemon test: qemu-storage-daemon is not installed (apt package qemu-system-common)');
});
