// kumo-virtiofsd vs QEMU's virtiofsd, both driven by `kumo-vu fs bench` on the same tmpfs directory with the
// same options (cache=auto, sandbox=chroot): lookup+getattr(+forget) ops/s, 4k random read IOPS, 1 MiB
// sequential read MB/s, create+write 4k+close files/s, at queue depth 1 and KUMO_BENCH_FS_DEPTH (default 8).
// KUMO_BENCH_SECONDS per case (default 1.5), KUMO_BENCH_FS_REPS runs per daemon and depth (default 5; the
// table gives the median). Each run gets a fresh daemon; kumo and QEMU alternate so that background load
// hits both alike.
import { execFile, type ChildProcess } from 'node:child_process';
import { onCleanup, spawnOwned } from '../vmm/lab/processes.js';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchTable } from './types.js';
import type { FsBenchResult } from '../vmm/kumo-vu/fs/bench.js';
import { cpuSeconds, sleep, stopProcess } from './processes.js';
import { fmtPercent, HostCpuMeter, STEAL_NOISY } from './host-cpu.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SECONDS = Number(process.env.KUMO_BENCH_SECONDS ?? 1.5);
const DEPTH = Number(process.env.KUMO_BENCH_FS_DEPTH ?? 8);
const REPS = Math.max(1, Number(process.env.KUMO_BENCH_FS_REPS ?? 5));
/** QEMU's C virtiofsd; KUMO_QEMU_VIRTIOFSD points elsewhere (a copy outside /usr, as in scripts/portable-bench.sh). */
const QEMU_VIRTIOFSD = process.env.KUMO_QEMU_VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';
/** tmpfs, as in the issue; falls back to the OS temp dir. */
const BASE = existsSync('/dev/shm') ? '/dev/shm' : '/tmp';

function startDaemon(who: 'kumo' | 'qemu', socket: string, share: string): ChildProcess {
  if (who === 'kumo') {
    return spawnOwned(process.execPath, [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${socket}`, `--shared-dir=${share}`,
      '--cache=auto', '--sandbox=chroot'], { stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn' } });
  }
  return spawnOwned(QEMU_VIRTIOFSD, [`--socket-path=${socket}`, '-o', `source=${share}`, '-o', 'sandbox=chroot', '-o', 'cache=auto'], { stdio: 'ignore' });
}

function kumoVu(socket: string, depth: number): Promise<FsBenchResult> {
  const args = [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', socket, '--connect-timeout', '15000', 'bench',
    '--seconds', String(SECONDS), '--iodepth', String(depth), '--json'];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { timeout: (SECONDS * 4 + 60) * 1000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`kumo-vu fs bench failed: ${stderr || err.message}`));
      resolve(JSON.parse(stdout) as FsBenchResult);
    });
  });
}

interface Run {
  r: FsBenchResult;
  /** Daemon CPU over the run, in cores. */
  cpu: number;
  /** Percent of the host's CPU time stolen by the hypervisor during the run. */
  steal: number | null;
  /** Percent of all the host's CPU time spent running (anything) during the run. */
  busy: number | null;
}

async function runOne(who: 'kumo' | 'qemu', dir: string, depth: number, rep: number): Promise<Run> {
  const socket = join(dir, `${who}-${depth}-${rep}.sock`);
  const child = startDaemon(who, socket, join(dir, 'share'));
  // Sampled while the client runs: both daemons exit when it disconnects, often before a read after it.
  let last = 0;
  const sample = setInterval(() => (last = Math.max(last, cpuSeconds(child.pid!))), 100);
  try {
    const c0 = cpuSeconds(child.pid!);
    const t0 = Date.now();
    const host = new HostCpuMeter();
    const r = await kumoVu(socket, depth);
    const cpu = (Math.max(last, cpuSeconds(child.pid!)) - c0) / ((Date.now() - t0) / 1000);
    return { r, cpu, ...host.shares() };
  } finally {
    clearInterval(sample);
    await stopProcess(child);
    await sleep(50);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const CASES: [string, keyof FsBenchResult][] = [
  ['lookup+getattr+forget ops/s', 'lookupGetattrOps'],
  ['4k random read IOPS', 'randRead4kIops'],
  ['1 MiB seq read MB/s', 'seqRead1mMBps'],
  ['create+write 4k+close files/s', 'createWriteCloseFiles'],
];

export async function run(): Promise<BenchTable[]> {
  const dir = mkdtempSync(join(BASE, 'kumo-fs-bench-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const share = join(dir, 'share');
  mkdirSync(share);
  const haveQemu = existsSync(QEMU_VIRTIOFSD);
  const rows: (string | number)[][] = [];
  const notes = [
    `${SECONDS} s per case, share on ${BASE} (tmpfs), both daemons: cache=auto, sandbox=chroot, default thread settings, seccomp filters and capability sets (QEMU: process-wide; kumo: --seccomp=kill and virtiofsd's capabilities on the request thread, a shorter list and none on its signal helper)`,
    `median of ${REPS} runs per daemon and depth, kumo and QEMU alternating, a fresh daemon each run; "per run" = kumo/QEMU of each pair of runs`,
    'QEMU virtiofsd serves requests from a thread pool (default 64 threads); kumo-virtiofsd from one worker thread that busy-polls briefly (its driver wake-ups written by a signal helper thread),',
    'with large READs spread over the CPUs through io_uring workers while other requests wait, and a lone one split in two',
    '(kumo-vu sleeps on interrupts: KUMO_VU_SPIN_US=0)',
    'depth = requests in flight on the request queue (independent request streams in kumo-vu); CPU = daemon CPU over the run, % of one core;',
    'kumo-vu (client) CPU: the driver itself over the four cases; near 100% the single-threaded client, not the daemon, sets the pace',
    'the timed loops write requests straight into guest memory and read replies there (protocol/fuse/raw.ts), with no allocation or',
    'promise per request: a heavier client took CPU that QEMU\'s pool would use (its depth-8 lookups doubled when the client got lighter)',
    'host busy %: the share of all the host\'s CPU time spent running anything (daemon, client, kernel) during each run; 100 = every CPU busy',
    `host steal %: the share of the host's CPU time the hypervisor gave to other tenants during each run; above ${STEAL_NOISY}% that run is noisy`,
  ];
  try {
    for (const depth of [1, DEPTH]) {
      const kumo: Run[] = [];
      const qemu: Run[] = [];
      for (let rep = 0; rep < REPS; rep++) {
        kumo.push(await runOne('kumo', dir, depth, rep));
        if (haveQemu) qemu.push(await runOne('qemu', dir, depth, rep));
      }
      for (const [name, key] of CASES) {
        const k = Math.round(median(kumo.map((x) => x.r[key])));
        const q = haveQemu ? Math.round(median(qemu.map((x) => x.r[key]))) : NaN;
        const perRun = qemu.map((x, i) => kumo[i].r[key] / x.r[key]);
        rows.push([name, depth, k, haveQemu ? q : 'n/a', haveQemu && q > 0 ? `${(k / q).toFixed(2)}x` : 'n/a',
          perRun.length ? `${Math.min(...perRun).toFixed(2)}-${Math.max(...perRun).toFixed(2)}x` : 'n/a']);
      }
      const cpu = (runs: { cpu: number }[]): string => (runs.length ? `${(median(runs.map((x) => x.cpu)) * 100).toFixed(0)}%` : 'n/a');
      rows.push(['daemon CPU', depth, cpu(kumo), cpu(qemu), '', '']);
      const client = (runs: { r: FsBenchResult }[]): string => (runs.length ? `${median(runs.map((x) => x.r.clientCpuPercent))}%` : 'n/a');
      rows.push(['kumo-vu (client) CPU', depth, client(kumo), client(qemu), '', '']);
      const hostPct = (runs: Run[], f: (x: Run) => number | null): string => runs.map((x) => fmtPercent(f(x))).join('/') || 'n/a';
      rows.push(['host busy % per run', depth, hostPct(kumo, (x) => x.busy), hostPct(qemu, (x) => x.busy), '', '']);
      rows.push(['host steal % per run', depth, hostPct(kumo, (x) => x.steal), hostPct(qemu, (x) => x.steal), '', '']);
    }
    if (!haveQemu) notes.push(`${QEMU_VIRTIOFSD} not installed (apt package qemu-system-common): QEMU columns are empty`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return [{ title: 'virtio-fs: kumo-virtiofsd vs QEMU virtiofsd (kumo-vu fs bench)', columns: ['case', 'depth', 'kumo', 'QEMU', 'kumo/QEMU', 'per run'], rows, notes }];
}
