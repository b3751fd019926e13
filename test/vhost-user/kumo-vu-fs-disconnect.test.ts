import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const exited = (c: ChildProcess): Promise<number | null> =>
  c.exitCode !== null ? Promise.resolve(c.exitCode) : new Promise((r) => c.once('exit', (code) => r(code)));

describe('kumo-vu fs when its back-end dies mid-run', () => {
  it('fails with a disconnect error instead of waiting out the 30 s request timeout', async () => {
    const dir = mkdtempSync('/tmp/kumo-vu-fs-hup-');
    const share = join(dir, 'share');
    mkdirSync(share);
    const sock = join(dir, 's.sock');
    const d = spawn('node', [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=chroot'], {
      stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn' },
    });
    const fe = spawn('node', [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', sock, '--connect-timeout', '15000', 'bench', '--seconds', '5', '--iodepth', '4'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    fe.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    try {
      for (let i = 0; i < 600 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
      // let the bench get going (connect, negotiate, first cases)
      await new Promise((r) => setTimeout(r, 2500));
      expect(fe.exitCode).toBeNull();
      d.kill('SIGKILL');
      const code = await exited(fe);
      expect(code).not.toBe(0);
      expect(err).toMatch(/disconnected|hung up|closed/);
    } finally {
      d.kill('SIGKILL');
      fe.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }, 25_000);
});
