// Boot probe: launches a VMM command line and times it to the guest's KUMO-READY marker.
// Used inside L1 by bench/boot.ts (all runs in one lab session):
//   tsx vmm/lab/boot-probe.ts SPEC.json   → one "KUMO-PROBE {json}" line per run on stdout.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface ProbeVariant { name: string; argv: string[] }
export interface ProbeSpec { runs: number; timeoutMs: number; variants: ProbeVariant[] }
export interface ProbeResult {
  variant: string;
  run: number;
  ok: boolean;
  /** ms from spawn to the KUMO-READY line on the VMM's stdout. */
  readyMs?: number;
  /** The guest's /proc/uptime (s) when it printed KUMO-READY. */
  guestUptimeS?: number;
  /** ms from spawn to the VMM's exit (guest power-off). */
  exitMs?: number;
  exitCode?: number | null;
  error?: string;
}

const READY = /KUMO-READY uptime=([\d.]+)/;

export function probeBoot(variant: ProbeVariant, run: number, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const res: ProbeResult = { variant: variant.name, run, ok: false };
    let out = '';
    let err = '';
    let child;
    try {
      child = spawn(variant.argv[0], variant.argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      resolve({ ...res, error: (e as Error).message });
      return;
    }
    const timer = setTimeout(() => {
      res.error ??= `timeout after ${timeoutMs} ms`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      out += d;
      if (res.readyMs === undefined) {
        const m = READY.exec(out);
        if (m) {
          res.readyMs = performance.now() - t0;
          res.guestUptimeS = Number(m[1]);
        }
      }
      if (out.length > 1 << 20) out = out.slice(-65536);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      err = (err + d).slice(-4000);
    });
    child.on('error', (e) => {
      res.error = e.message;
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      res.exitMs = performance.now() - t0;
      res.exitCode = code;
      res.ok = res.readyMs !== undefined;
      if (!res.ok && !res.error) {
        const lines = (err.trim() || out.trim()).split('\n').map((l) => l.trim()).filter(Boolean);
        const why = [...lines].reverse().find((l) => /error|fail|cannot|unknown|invalid/i.test(l)) ?? lines.slice(-2).join(' | ');
        res.error = `exit ${code} without KUMO-READY: ${why.slice(0, 300)}`;
      }
      resolve(res);
    });
  });
}

async function main(specFile: string): Promise<void> {
  const spec = JSON.parse(fs.readFileSync(specFile, 'utf8')) as ProbeSpec;
  for (const v of spec.variants) {
    for (let i = 0; i < spec.runs; i++) {
      const r = await probeBoot(v, i, spec.timeoutMs);
      process.stdout.write(`KUMO-PROBE ${JSON.stringify(r)}\n`);
      // A VMM that cannot boot at all will not do better on the next run.
      if (!r.ok && i === 0) break;
    }
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  const spec = process.argv[2];
  if (!spec) {
    process.stderr.write('usage: tsx vmm/lab/boot-probe.ts SPEC.json\n');
    process.exit(2);
  }
  await main(spec);
}
