// Runs our net backend inside a test namespace and kumo-vu against it.
import { execFile, type ChildProcess } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { NetNs } from './netns.js';

export const repo = fileURLToPath(new URL('../../', import.meta.url));
export const backendBin = `${repo}bin/kumo-vhost-user-net.js`;
export const kumoVuBin = `${repo}bin/kumo-vu.js`;

export type Counters = Record<string, number>;

export class BackendProc {
  private readonly lines: string[] = [];
  private waiters: ((l: string) => void)[] = [];
  private readonly rl: Interface;
  stderr = '';
  exited: number | null = null;

  constructor(readonly proc: ChildProcess) {
    this.rl = createInterface({ input: proc.stdout! });
    this.rl.on('line', (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
    proc.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    proc.on('exit', (code) => {
      this.exited = code ?? -1;
    });
  }

  nextLine(timeoutMs = 20_000): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`backend said nothing for ${timeoutMs} ms; stderr:\n${this.stderr.slice(-2000)}`)), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }

  async counters(): Promise<{ counters: Counters; pairs: Counters[] }> {
    this.proc.kill('SIGUSR1');
    for (;;) {
      const o = JSON.parse(await this.nextLine()) as { counters?: Counters; pairs?: Counters[] };
      if (o.counters && o.pairs) return { counters: o.counters, pairs: o.pairs };
    }
  }

  async stop(): Promise<void> {
    if (this.exited !== null) return;
    const done = new Promise<void>((r) => this.proc.once('exit', () => r()));
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await done;
    clearTimeout(t);
  }
}

/** Starts kumo-vhost-user-net inside `ns` and waits for its ready line. */
export async function startBackend(ns: NetNs, params: string): Promise<{ be: BackendProc; tap: string }> {
  const be = new BackendProc(ns.spawn(process.execPath, [backendBin, '--net-backend', params], { env: { ...process.env, KUMO_LOG: 'warn' } }));
  const ready = JSON.parse(await be.nextLine(30_000)) as { ready?: boolean; tap?: string };
  if (!ready.ready || !ready.tap) throw new Error(`backend did not start: ${JSON.stringify(ready)}`);
  return { be, tap: ready.tap };
}

/** Runs `kumo-vu net --socket S --json ARGS...` and parses its last JSON line. */
export function kumoVuNet(socket: string, args: string[], timeoutMs = 60_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [kumoVuBin, 'net', '--socket', socket, '--json', ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      const lines = stdout.trim().split('\n').filter(Boolean);
      const last = lines.at(-1);
      if (err && !last) return reject(new Error(`kumo-vu failed: ${err.message}\n${stderr}`));
      try {
        resolve({ ...(JSON.parse(last ?? '{}') as Record<string, unknown>), exitCode: err ? (err as { code?: number }).code ?? 1 : 0, stderr });
      } catch {
        reject(new Error(`kumo-vu printed no JSON: ${stdout}\n${stderr}`));
      }
    });
  });
}

export function linkStat(ns: NetNs, dev: string, stat: string): number {
  return Number(ns.exec('cat', [`/sys/class/net/${dev}/statistics/${stat}`]).trim());
}
