import { describe, it, expect } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const QEMU_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const SCRIPT = fileURLToPath(new URL('./script.fs.txt', import.meta.url));
/**
 * Replies where QEMU's C virtiofsd (7.2) differs from ours, each for a known reason:
 * ACCESS is not implemented there (ENOSYS); UNLINK of a name the client never looked up is EIO there;
 * its OFD GETLK rejects our lock owner (EINVAL); SETLKW is refused there (EOPNOTSUPP) where we take a free
 * lock at once and wait for a held one; after a failed CREATE path lookup it answers EIO.
 */
const KNOWN = new Set(['rm a/missing', 'lock a/new wr 0 99', 'lock a/new rd 10 20', 'lockw a/new wr 0 10', 'access a/new 4',
  'write deep/x y', 'mkdir a/new', 'ls a', 'destroy']);

/** kumo-fh: inodes by file handle with a 2-fd inode cache, so nearly every op reopens a handle. */
function run(kind: 'kumo' | 'kumo-fh' | 'qemu', dir: string): { out: string; tree: string } {
  const share = join(dir, kind);
  mkdirSync(share);
  const sock = join(dir, `${kind}.sock`);
  const fh = kind === 'kumo-fh' ? ['--inode-file-handles=mandatory'] : [];
  const d: ChildProcess = kind !== 'qemu'
    ? spawn('node', [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--xattr', '--posix-lock', '--sandbox=namespace', ...fh],
      { stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn', KUMO_FS_OPEN_INODE_FDS: '2' } })
    : spawn(QEMU_VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${share}`, '-o', 'sandbox=chroot', '-o', 'xattr', '-o', 'posix_lock'], { stdio: 'ignore' });
  try {
    const r = spawnSync('node', [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', sock, '--connect-timeout', '15000', 'run', SCRIPT], { encoding: 'utf8', timeout: 90_000 });
    const tree = spawnSync('sh', ['-c', `cd ${share} && find . -printf '%p %y %m %s %l\\n' | sort`], { encoding: 'utf8' }).stdout;
    return { out: r.stdout, tree };
  } finally {
    d.kill('SIGKILL');
  }
}

describe('kumo-virtiofsd vs QEMU virtiofsd, same script over vhost-user', () => {
  it.skipIf(!existsSync(QEMU_VIRTIOFSD))('gives the same replies and leaves the same tree', () => {
    const dir = mkdtempSync('/tmp/kumo-fs-cmp-');
    try {
      const q = run('qemu', dir);
      const k = run('kumo', dir);
      const ql = q.out.split('\n');
      const kl = k.out.split('\n');
      expect(kl.filter((l) => l.startsWith('> ')).length).toBeGreaterThanOrEqual(60);
      expect(kl.length).toBe(ql.length);
      const diffs: string[] = [];
      for (let i = 1; i < kl.length; i += 2) {
        const cmd = kl[i - 1].slice(2);
        if (kl[i] !== ql[i] && !KNOWN.has(cmd)) diffs.push(`${cmd}: kumo=${kl[i]} qemu=${ql[i]}`);
      }
      expect(diffs).toEqual([]);
      expect(k.tree).toBe(q.tree);
      const f = run('kumo-fh', dir);
      expect(f.out).toBe(k.out);
      expect(f.tree).toBe(k.tree);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 200_000);
});
