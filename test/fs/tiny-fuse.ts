// The test FUSE servers (tiny-fuse.py): where they can run, and mounting one.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const SERVER = fileURLToPath(new URL('./tiny-fuse.py', import.meta.url));

/** Why no test FUSE file system can be mounted here, or null. */
export function tinyFuseUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not root (mounting a FUSE file system)';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (spawnSync('python3', ['-c', '0']).error) return 'no python3 (the test FUSE server)';
  return null;
}

/** Mounts tiny-fuse.py's `mode` file system on `dir` (served in the background until unmounted); its output. */
export function mountTinyFuse(dir: string, mode: 'long-names' | 'short-reads'): string {
  return spawnSync('python3', [SERVER, dir, mode], { encoding: 'utf8', timeout: 10_000 }).stdout;
}
