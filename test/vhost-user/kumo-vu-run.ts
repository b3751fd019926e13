// Runs bin/kumo-vu.js to the end for the back-end tests: its stdout and stderr together.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const KUMO_VU = fileURLToPath(new URL('../../bin/kumo-vu.js', import.meta.url));

export function kumoVu(args: string[], input?: string): string {
  const r = spawnSync(process.execPath, [KUMO_VU, ...args], { encoding: 'utf8', input, timeout: 60_000 });
  return r.stdout + r.stderr;
}
