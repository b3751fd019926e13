// kumo-vu's own ceiling: `kumo-vu blk bench` 4k randread QD32 against qemu-storage-daemon's null-co export
// (no storage work at all), 1 and 2 queues; plus the same load against the RAM blk test back-end built on
// VhostUserDaemon (how fast the TypeScript daemon framework itself goes). ~3 s per case (KUMO_BENCH_SECONDS).
import { execFile, spawnSync, type ChildProcess } from 'node:child_process';
import { onCleanup, spawnOwned } from '../vmm/lab/processes.js';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchTable } from './types.js';
import { cpuSeconds, stopProcess, waitForSocket } from './processes.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SECONDS = Number(process.env.KUMO_BENCH_SECONDS ?? 3);





interface VuResult {
  iops: number;
  latP50Us: number;
  latP99Us: number;
  cpuPercent: number;
  seconds: number;
  errors: number;
}

function kumoVuBench(socket: string, queues: number): Promise<VuResult> {
  const args = [join(ROOT, 'bin/kumo-vu.js'), 'blk', '--socket', socket, 'bench', '--rw', 'randread', '--bs', '4k',
    '--iodepth', '32', '--queues', String(queues), '--seconds', String(SECONDS), '--json'];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { timeout: (SECONDS + 60) * 1000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`kumo-vu failed: ${stderr || err.message}`));
      resolve(JSON.parse(stdout) as VuResult);
    });
  });
}

async function runCase(name: string, child: ChildProcess, socket: string, queues: number): Promise<(string | number)[]> {
  try {
    await waitForSocket(socket, child);
    const pid = child.pid!;
    const c0 = cpuSeconds(pid);
    const r = await kumoVuBench(socket, queues);
    const backendCpu = ((cpuSeconds(pid) - c0) / r.seconds) * 100;
    return [name, queues, Math.round(r.iops), r.latP50Us, r.latP99Us, `${r.cpuPercent.toFixed(0)}%`, `${backendCpu.toFixed(0)}%`, r.errors];
  } finally {
    await stopProcess(child);
  }
}

export async function run(): Promise<BenchTable[]> {
  const dir = mkdtempSync(join(tmpdir(), 'kumo-vu-bench-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const rows: (string | number)[][] = [];
  const notes = [`${SECONDS} s per case; 4k randread, iodepth 32 per queue; CPU = % of one core over the run (2-core machine)`];
  try {
    const haveQsd = spawnSync('qemu-storage-daemon', ['--version']).status === 0;
    for (const queues of [1, 2]) {
      if (!haveQsd) break;
      const socket = join(dir, `qsd${queues}.sock`);
      const child = spawnOwned('qemu-storage-daemon', [
        '--blockdev', 'driver=null-co,node-name=n,size=1073741824',
        '--export', `type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues}`,
      ], { stdio: 'ignore' });
      rows.push(await runCase('qemu-storage-daemon null-co', child, socket, queues));
    }
    if (!haveQsd) notes.push('qemu-storage-daemon not installed (apt package qemu-system-common): its rows are missing');
    for (const queues of [1, 2]) {
      const socket = join(dir, `ram${queues}.sock`);
      const child = spawnOwned(process.execPath, ['--import', 'tsx', join(ROOT, 'test/vhost-user/fixtures/ram-blk-daemon.ts'), socket, '256', String(queues)], {
        stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn' },
      });
      rows.push(await runCase('VhostUserDaemon RAM blk (test fixture)', child, socket, queues));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return [{
    title: 'kumo-vu ceiling: 4k randread QD32',
    columns: ['back-end', 'queues', 'IOPS', 'p50 us', 'p99 us', 'kumo-vu CPU', 'back-end CPU', 'errors'],
    rows,
    notes,
  }];
}
