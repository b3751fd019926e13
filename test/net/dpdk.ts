// dpdk-testpmd as a third-party vhost-user peer (package dpdk-dev), run for a fixed time.
import { spawn, execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let seq = 0;

export function testpmdUnavailable(): string | null {
  try {
    execFileSync('dpdk-testpmd', ['--version'], { stdio: 'ignore', timeout: 20_000 });
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'dpdk-testpmd is not installed (apt-get install dpdk-dev)' : null;
  }
}

export interface TestpmdResult {
  rx: number;
  tx: number;
  output: string;
}

export interface TestpmdRun {
  /** Resolves when testpmd printed its first periodic stats (ports started). */
  started: Promise<void>;
  /** Stops it (SIGINT) and returns the accumulated forward statistics. */
  stop(): Promise<TestpmdResult>;
}

/**
 * Starts testpmd with one vdev (e.g. `net_virtio_user0,path=S,queues=1` or `net_vhost0,iface=S,queues=1`)
 * and `--forward-mode=mode`, non-interactive with periodic stats. Its forwarding lcore is the core that is
 * not `mainLcore` (two testpmds pass different values so they do not spin on the same core).
 */
export function startTestpmd(vdev: string, mode: string, extra: string[] = [], mainLcore = 0): TestpmdRun {
  const prefix = `kumo-${process.pid}-${seq++}`;
  const args = [
    '-l', '0-1', '--main-lcore', String(mainLcore), '--no-huge', '-m', '512', '--no-pci', '--vdev', vdev, '--file-prefix', prefix, '--log-level', 'lib.eal:error',
    '--', '--no-numa', '--total-num-mbufs=4096', '--nb-cores=1', `--forward-mode=${mode}`, '--stats-period', '1', ...extra,
  ];
  const p = spawn('dpdk-testpmd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  // EAL leaves its runtime directory (/var/run/dpdk/PREFIX for root, else under XDG_RUNTIME_DIR or the temp dir) behind.
  p.once('exit', () => {
    for (const base of ['/var/run/dpdk', join(process.env.XDG_RUNTIME_DIR ?? tmpdir(), 'dpdk')]) rmSync(join(base, prefix), { recursive: true, force: true });
  });
  let output = '';
  let onStats: (() => void) | null = null;
  const started = new Promise<void>((resolve, reject) => {
    onStats = resolve;
    p.once('exit', (c) => reject(new Error(`testpmd exited early (${c}):\n${output.slice(-3000)}`)));
  });
  const collect = (d: Buffer) => {
    output += d.toString();
    if (onStats && /No probed ethernet devices|Failed to (attach|probe)|Creation of mbuf pool .* failed/.test(output)) {
      p.kill('SIGINT');
    }
    if (onStats && output.includes('Rx-pps')) {
      onStats();
      onStats = null;
    }
  };
  p.stdout.on('data', collect);
  p.stderr.on('data', collect);
  started.catch(() => {});
  return {
    started,
    stop: () =>
      new Promise<TestpmdResult>((resolve) => {
        const t = setTimeout(() => p.kill('SIGKILL'), 15_000);
        p.once('exit', () => {
          clearTimeout(t);
          const acc = output.slice(output.lastIndexOf('Accumulated forward statistics'));
          const num = (re: RegExp) => Number(re.exec(acc)?.[1] ?? NaN);
          resolve({ rx: num(/RX-packets:\s+(\d+)/), tx: num(/TX-packets:\s+(\d+)/), output });
        });
        if (p.exitCode !== null) p.emit('exit', p.exitCode);
        else p.kill('SIGINT');
      }),
  };
}
