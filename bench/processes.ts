// Process helpers the benchmarks share: start-up wait, clean stop, CPU accounting.
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

const CLK_TCK = 100;
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits for a server's socket file; fails if the process exits first or after ~10 s. */
export async function waitForSocket(path: string, child: ChildProcess, what = 'back-end'): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    if (existsSync(path)) return sleep(150);
    await sleep(25);
  }
  throw new Error(`${what} did not create ${path}`);
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process is gone. */
export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}

/** utime + stime of a process (all threads), in seconds; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}
