// kumo-vu net bench against a back-end that dies mid-run: an error and a non-zero exit, as blk bench gives, not a rate
// over a run the back-end was not there for.
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { kumoVuBin, startBackend } from './harness.js';

const why = netnsUnavailable();
if (why) console.warn(`skipping net bench disconnect test: ${why}`);

describe.skipIf(why !== null)('kumo-vu net bench', () => {
  it('reports a back-end that dies mid-run as disconnected', async () => {
    const ns = NetNs.create('benchdie');
    const sock = `/tmp/kumo-net-bench-die-${process.pid}.sock`;
    const { be } = await startBackend(ns, `ip=10.79.0.1,mask=255.255.255.0,socket=${sock}`);
    try {
      const bench = spawn(process.execPath, [kumoVuBin, 'net', '--socket', sock, 'bench', '--tx', '--to', '10.79.0.1', '--dst-mac', '02:00:00:00:00:01', '--seconds', '6'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      bench.stdout.on('data', (d: Buffer) => (out += d.toString()));
      bench.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((r) => bench.on('exit', (code) => r(code)));
      await new Promise((r) => setTimeout(r, 1500));
      be.proc.kill('SIGKILL');
      const t0 = Date.now();
      const code = await exited;
      expect(code, out).not.toBe(0);
      expect(out).toMatch(/disconnected/);
      expect(Date.now() - t0).toBeLessThan(3000);
    } finally {
      be.proc.kill('SIGKILL');
      ns.delete();
      rmSync(sock, { force: true }); // a back-end killed outright leaves its socket file
    }
  }, 60_000);
});
