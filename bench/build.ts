import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * Builds dist/ (tsc output plus the esbuild bundle of the VMM) and pins it for every process this
 * benchmark starts, so start-up figures measure kumo rather than tsx. Returns how kumo runs.
 */
export function buildAndPin(): string {
  const r = spawnSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) return `TypeScript through tsx (npm run build failed: ${(r.stderr || r.stdout).trim().split('\n')[0]})`;
  // Just built: also skips the launcher's source-tree freshness walk (slow over the lab's virtio-fs).
  process.env.KUMO_DIST = '1';
  return 'bundled JS (dist/bundle/)';
}
