import { mkdirSync, mkdtempSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, type FuseClient } from '../../protocol/fuse/index.js';
import { LocalShare } from './local-transport.js';
import { connectFs, errCode } from './daemons.js';

const O_RDWR = 2;
const F_WRLCK = 1;
const LIMIT = 4;
/** What kumo-virtiofsd keeps for itself out of --rlimit-nofile (main.ts: two per memory slot, plus 256). */
const INTERNAL_FDS = 2 * 64 + 256;

let share: LocalShare | null = null;
const cleanups: (() => void)[] = [];
afterEach(() => {
  share?.close();
  share = null;
  for (const f of cleanups.splice(0).reverse()) f();
});

async function limited(files: number): Promise<{ c: FuseClient; count: () => number; dir: string }> {
  share = new LocalShare('kumo-fs-fds-', { guestFdLimit: LIMIT, posixLock: true });
  for (let i = 0; i < files; i++) writeFileSync(join(share.dir, `f${i}`), String(i));
  await share.client.init();
  const fds = share.fs.guestFds;
  return { c: share.client, count: () => fds.count, dir: share.dir };
}

describe('the fds a guest may make the daemon hold', () => {
  it('inodes count until FORGET; a new one past the limit gets ENFILE, a known one does not', async () => {
    const { c, count } = await limited(6);
    const ids: number[] = [];
    for (let i = 0; i < LIMIT; i++) ids.push((await c.lookup(FUSE_ROOT_ID, `f${i}`)).nodeid);
    expect(count()).toBe(LIMIT);
    expect(await errCode(c.lookup(FUSE_ROOT_ID, 'f4'))).toBe('ENFILE');
    expect((await c.lookup(FUSE_ROOT_ID, 'f0')).nodeid).toBe(ids[0]);
    await c.forget(ids[0], 2);
    expect(count()).toBe(LIMIT - 1);
    await c.lookup(FUSE_ROOT_ID, 'f4');
    expect(count()).toBe(LIMIT);
  });

  it('a creation that would pass the limit is refused before anything is made on the host', async () => {
    const { c, count, dir } = await limited(2);
    const f0 = await c.lookup(FUSE_ROOT_ID, 'f0');
    const f1 = await c.lookup(FUSE_ROOT_ID, 'f1');
    const opened = await c.open(f0.nodeid, O_RDWR);
    expect(count()).toBe(3);
    expect(await errCode(c.create(FUSE_ROOT_ID, 'new', O_RDWR, 0o644))).toBe('ENFILE');
    expect(existsSync(join(dir, 'new'))).toBe(false);
    await c.mkdir(FUSE_ROOT_ID, 'd');
    expect(count()).toBe(LIMIT);
    for (const [what, p] of [['mkdir', c.mkdir(FUSE_ROOT_ID, 'd2')], ['symlink', c.symlink(FUSE_ROOT_ID, 'l', 'f0')],
      ['mknod', c.mknod(FUSE_ROOT_ID, 'n', 0o100644)], ['open', c.open(f1.nodeid, 0)], ['opendir', c.opendir(FUSE_ROOT_ID)]] as const) {
      expect(await errCode(p), what).toBe('ENFILE');
    }
    expect(['d2', 'l', 'n'].filter((n) => existsSync(join(dir, n)))).toEqual([]);
    // A hard link names an inode the guest holds: no fd more, and none refused (it was ENFILE).
    expect((await c.link(f1.nodeid, FUSE_ROOT_ID, 'f1-link')).nodeid).toBe(f1.nodeid);
    expect(count()).toBe(LIMIT);
    // Releasing the open file makes room again.
    await c.release(f0.nodeid, opened.fh);
    expect(count()).toBe(3);
    const r = await c.open(f1.nodeid, 0);
    await c.release(f1.nodeid, r.fh);
  });

  it("counts each lock owner's fd until its FLUSH, and everything is given back at DESTROY", async () => {
    const { c, count } = await limited(1);
    const f = await c.lookup(FUSE_ROOT_ID, 'f0');
    const h = await c.open(f.nodeid, O_RDWR);
    await c.setlk(f.nodeid, h.fh, 7n, { start: 0n, end: 9n, type: F_WRLCK, pid: 1 });
    await c.setlk(f.nodeid, h.fh, 8n, { start: 10n, end: 19n, type: F_WRLCK, pid: 2 });
    expect(count()).toBe(4);
    expect(await errCode(c.setlk(f.nodeid, h.fh, 9n, { start: 20n, end: 29n, type: F_WRLCK, pid: 3 }))).toBe('ENFILE');
    await c.flush(f.nodeid, h.fh, 7n);
    expect(count()).toBe(3);
    await c.setlk(f.nodeid, h.fh, 9n, { start: 20n, end: 29n, type: F_WRLCK, pid: 3 });
    await c.destroy();
    expect(count()).toBe(0);
  });
});

describe('kumo-virtiofsd --rlimit-nofile', () => {
  const BIN = fileURLToPath(new URL('../../bin/kumo-virtiofsd.js', import.meta.url));

  it('leaves the guest the limit less what the daemon keeps, and keeps serving at ENFILE', async () => {
    const base = mkdtempSync('/tmp/kumo-fs-rlimit-');
    const dir = join(base, 'share');
    mkdirSync(dir);
    for (let i = 0; i < 8; i++) writeFileSync(join(dir, `f${i}`), String(i));
    const c = await connectFs({ who: 'kumo', kumoArgs: [`--rlimit-nofile=${INTERNAL_FDS + 5}`] }, base, dir, cleanups);
    await c.init();
    const got: string[] = [];
    for (let i = 0; i < 8; i++) got.push(await errCode(c.lookup(FUSE_ROOT_ID, `f${i}`)));
    expect(got).toEqual(['ok', 'ok', 'ok', 'ok', 'ok', 'ENFILE', 'ENFILE', 'ENFILE']);
    expect((await c.getattr(FUSE_ROOT_ID)).mode & 0o170000).toBe(0o040000);
  }, 30_000);

  it('refuses a limit that leaves the guest nothing, and 0 leaves the limit as it is', () => {
    const run = (n: number): { status: number | null; stderr: string } => spawnSync(process.execPath, [BIN, '--socket-path=/nonexistent-kumo-dir/x.sock',
      '--shared-dir=/tmp', '--sandbox=none', `--rlimit-nofile=${n}`], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'error' } });
    const low = run(100);
    expect(low.status).toBe(1);
    expect(low.stderr).toContain(`the daemon keeps ${INTERNAL_FDS} for itself; it must be at least ${INTERNAL_FDS + 1}`);
    // 0 used to set the soft limit to 0; now the daemon gets as far as the socket (whose directory is missing).
    const zero = run(0);
    expect(zero.status).toBe(1);
    expect(zero.stderr).toContain("the socket's directory /nonexistent-kumo-dir does not exist");
    // As in virtiofsd, a limit the kernel cannot give is an error, not a silent lower one.
    const nrOpen = Number(readFileSync('/proc/sys/fs/nr_open', 'utf8'));
    const high = run(nrOpen + 1);
    expect(high.status).toBe(1);
    expect(high.stderr).toContain(`--rlimit-nofile=${nrOpen + 1}: the fd limit cannot be raised above ${nrOpen}`);
  }, 30_000);
});
