import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, existsSync } from 'node:fs';
import { verifyBlk } from '../../vmm/kumo-vu/blk/verify.js';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBackend, stopBackend } from './vu-client.js';

const KUMO_VU = fileURLToPath(new URL('../../bin/kumo-vu.js', import.meta.url));
const haveKumoVu = existsSync(fileURLToPath(new URL('../../vmm/kumo-vu/cli.ts', import.meta.url)));

describe.skipIf(!haveKumoVu)('kumo-vu blk verify against kumo-vhost-user-blk', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync('/dev/shm/kumo-vuv-');
    writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(64 << 20));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('on a read-only back-end checks that a write is refused and changes nothing', async () => {
    const img = join(dir, 'ro.raw');
    writeFileSync(img, Buffer.alloc(4 << 20, 0x3c));
    const sock = join(dir, 'ro.sock');
    const child = await startBackend(`path=${img},socket=${sock},readonly=on`);
    try {
      const r = spawnSync(process.execPath, [KUMO_VU, 'blk', '--socket', sock, 'verify'], { encoding: 'utf8', env: { ...process.env, KUMO_LOG: 'warn' }, timeout: 60_000 });
      expect(r.stdout, r.stderr).toMatch(/PASS\s+write refused on the read-only device/);
      expect(r.stdout).toMatch(/PASS\s+read-only data unchanged after the refused write/);
      expect(r.stdout).toMatch(/RESULT: PASS/);
    } finally {
      await stopBackend(child);
    }
  });

  for (const queueSize of [128, 1024]) {
    it(`passes with 1, 2 and 4 queues, queue_size=${queueSize}`, async () => {
      const sock = join(dir, `q${queueSize}.sock`);
      const child = await startBackend(`path=${join(dir, 'disk.raw')},socket=${sock},num_queues=4,queue_size=${queueSize}`);
      try {
        for (const queues of [1, 2, 4]) {
          const r = spawnSync(process.execPath, [KUMO_VU, 'blk', '--socket', sock, '--connect-timeout', '5000', 'verify', '--queues', String(queues),
            '--queue-size', String(queueSize), '--json'], {
            encoding: 'utf8', env: { ...process.env, KUMO_LOG: 'warn' }, timeout: 60_000,
          });
          let report: { ok: boolean; queuesTested: number };
          try {
            report = JSON.parse(r.stdout) as { ok: boolean; queuesTested: number };
          } catch {
            throw new Error(`kumo-vu blk verify printed no JSON (rc ${r.status}): ${r.stdout.slice(-400)} ${r.stderr.slice(-800)}`);
          }
          if (!report.ok) throw new Error(`verify failed with ${queues} queues: ${r.stdout.slice(0, 3000)}`);
          expect(report.queuesTested).toBe(queues);
        }
        // More queues than the back-end has is a failure, not a quiet cap.
        const eight = spawnSync(process.execPath, [KUMO_VU, 'blk', '--socket', sock, 'verify', '--queues', '8', '--queue-size', String(queueSize)], {
          encoding: 'utf8', env: { ...process.env, KUMO_LOG: 'warn' }, timeout: 60_000,
        });
        expect(eight.status).toBe(1);
        expect(eight.stdout).toContain('8 queue(s) asked for, the back-end has 4');
        // bench: an iodepth whose rings would pass 1024 is a clear error up front (it was a dropped connection).
        const deep = spawnSync(process.execPath, [KUMO_VU, 'blk', '--socket', sock, 'bench', '--iodepth', '400', '--seconds', '0.2'], {
          encoding: 'utf8', env: { ...process.env, KUMO_LOG: 'warn' }, timeout: 60_000,
        });
        expect(deep.status).toBe(2);
        expect(deep.stderr).toContain('--iodepth 400 needs rings of 2048');
        // bench with more queues than the back-end has names both counts (it said "queue count out of range").
        const wide = spawnSync(process.execPath, [KUMO_VU, 'blk', '--socket', sock, 'bench', '--queues', '8', '--seconds', '0.2'], {
          encoding: 'utf8', env: { ...process.env, KUMO_LOG: 'warn' }, timeout: 60_000,
        });
        expect(wide.status).toBe(2);
        expect(wide.stderr).toContain('the back-end serves 4 queue(s), 8 asked for');
      } finally {
        await stopBackend(child);
      }
    });
  }

  it('reports a back-end that dies mid-run as disconnected, at once rather than after its timeout', async () => {
    const sock = join(dir, 'dies.sock');
    const child = await startBackend(`path=${join(dir, 'disk.raw')},socket=${sock}`);
    try {
      let t0 = 0;
      const r = await verifyBlk({ socket: sock, connectTimeoutMs: 5000, afterWrites: () => {
        child.kill('SIGKILL');
        t0 = Date.now();
      } });
      expect(r.ok).toBe(false);
      expect(r.checks.find((c) => !c.ok)?.detail).toContain('the vhost-user back-end disconnected');
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      await stopBackend(child);
    }
  });

  it('bench reports a back-end that dies mid-run as disconnected, at once rather than after its stall timeout', async () => {
    const sock = join(dir, 'bench-dies.sock');
    const child = await startBackend(`path=${join(dir, 'disk.raw')},socket=${sock}`);
    try {
      const bench = spawn(process.execPath, [KUMO_VU, 'blk', '--socket', sock, 'bench', '--seconds', '8', '--iodepth', '4'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      bench.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((resolve) => bench.on('exit', (code) => resolve(code)));
      await new Promise((r) => setTimeout(r, 1500));
      child.kill('SIGKILL');
      const t0 = Date.now();
      const code = await exited;
      expect(code).not.toBe(0);
      expect(stderr).toContain('the vhost-user back-end disconnected');
      // Without the hang-up in its epoll the bench ran out its 8 s and then waited 5 s more for the stall.
      expect(Date.now() - t0).toBeLessThan(4000);
    } finally {
      await stopBackend(child);
    }
  });

  it('fails when a spot no longer holds what was written there once every spot is written (misplaced writes)', async () => {
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'alias.sock');
    const child = await startBackend(`path=${img},socket=${sock},num_queues=2`);
    try {
      // What a back-end that writes every sector to the wrong place would leave: the first spot overwritten later.
      const r = await verifyBlk({ socket: sock, connectTimeoutMs: 5000, afterWrites: () => {
        const fd = openSync(img, 'r+');
        writeSync(fd, Buffer.alloc(4096, 0x77), 0, 4096, 4096);
        closeSync(fd);
      } });
      expect(r.ok).toBe(false);
      expect(r.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(['queue 0: start (sector 0, 65536 B) still holds its data after every write (read on queue 1)']);
    } finally {
      await stopBackend(child);
    }
  });
});

describe('kumo-vu without a back-end', () => {
  it('names the socket and the reason it cannot connect', () => {
    const r = spawnSync(process.execPath, [KUMO_VU, 'blk', '--socket', '/nonexistent-kumo/blk.sock', 'verify'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/cannot connect to the vhost-user back-end at \/nonexistent-kumo\/blk\.sock: .*ENOENT/);
  });
});
