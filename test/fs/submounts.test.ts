import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, Init } from '../../protocol/fuse/index.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { FuseClient } from '../../protocol/fuse/index.js';
import { connectFs } from './daemons.js';
import { LocalShare } from './local-transport.js';

const FUSE_ATTR_SUBMOUNT = 1;
const INIT = Init.ASYNC_READ | Init.DO_READDIRPLUS | Init.SUBMOUNTS;
const root = process.getuid?.() === 0;
if (!root) console.log('submount share tests skipped: mounting a tmpfs inside the share needs root');

const args = (...extra: string[]): string[] => ['--socket-path=/s', '--shared-dir=/d', ...extra];

describe('--announce-submounts options', () => {
  it('is on by default as in virtiofsd; --no-announce-submounts turns it off; -o announce_submounts keeps it on', () => {
    expect(parseArgs(args()).fs.announceSubmounts).toBe(true);
    expect(parseArgs(args('--no-announce-submounts')).fs.announceSubmounts).toBe(false);
    expect(parseArgs(args('--no-announce-submounts', '--announce-submounts')).fs.announceSubmounts).toBe(true);
    expect(parseArgs(['--socket-path=/s', '-o', 'source=/d,announce_submounts']).fs.announceSubmounts).toBe(true);
  });
});

describe.skipIf(!root)('submounts on a share', () => {
  let share: LocalShare | null = null;
  let mounted: string | null = null;
  afterEach(() => {
    if (mounted !== null) spawnSync('umount', ['-l', mounted]);
    mounted = null;
    share?.close();
    share = null;
  });

  /** A share with plain/ and sub/, a tmpfs mounted on sub/ holding inner/. */
  function withMount(announceSubmounts: boolean): LocalShare {
    share = new LocalShare('kumo-fs-submount-', { announceSubmounts });
    mkdirSync(join(share.dir, 'plain'));
    mkdirSync(join(share.dir, 'sub'));
    const r = spawnSync('mount', ['-t', 'tmpfs', 'kumo-submount', join(share.dir, 'sub')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    mounted = join(share.dir, 'sub');
    mkdirSync(join(share.dir, 'sub', 'inner'));
    return share;
  }

  it('flags the mount point only, in LOOKUP and READDIRPLUS, not the directories inside it', async () => {
    const c = withMount(true).client;
    await c.init(INIT);
    expect(c.granted(Init.SUBMOUNTS)).toBe(true);
    const sub = await c.lookup(FUSE_ROOT_ID, 'sub');
    expect(sub.attr.flags & FUSE_ATTR_SUBMOUNT).toBe(FUSE_ATTR_SUBMOUNT);
    expect((await c.lookup(FUSE_ROOT_ID, 'plain')).attr.flags).toBe(0);
    // Inside the submount everything shares its filesystem: a flag there would make the guest mount every
    // directory on its own, and rename or link between two of them would fail with EXDEV.
    expect((await c.lookup(sub.nodeid, 'inner')).attr.flags).toBe(0);
    expect((await c.mkdir(sub.nodeid, 'made')).attr.flags).toBe(0);
    expect((await c.getattr(sub.nodeid)).flags).toBe(0);
    const dir = await c.opendir(FUSE_ROOT_ID);
    const listed = new Map((await c.readdirplus(FUSE_ROOT_ID, dir.fh, 0n)).map((e) => [e.dirent.name.toString(), e.entry.attr.flags]));
    expect([listed.get('sub'), listed.get('plain')]).toEqual([FUSE_ATTR_SUBMOUNT, 0]);
    const inner = await c.opendir(sub.nodeid);
    const inside = await c.readdirplus(sub.nodeid, inner.fh, 0n);
    expect(inside.filter((e) => e.entry.nodeid !== 0).map((e) => [e.dirent.name.toString(), e.entry.attr.flags]).sort()).toEqual([['inner', 0], ['made', 0]]);
  });

  /**
   * A share whose dir/ (holding inner/ and f) is bind-mounted at bind/ too: the same filesystem, so st_dev cannot
   * tell, only the mount ID can. Kata's shared directory is made of such bind mounts.
   */
  function withBind(dir: string): void {
    mkdirSync(join(dir, 'dir', 'inner'), { recursive: true });
    writeFileSync(join(dir, 'dir', 'f'), 'one');
    mkdirSync(join(dir, 'bind'));
    const r = spawnSync('mount', ['--bind', join(dir, 'dir'), join(dir, 'bind')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    mounted = join(dir, 'bind');
  }

  /** What a guest needs of a same-filesystem bind mount: its own submount, and inodes of its own under it. */
  async function expectBindIsSubmount(c: FuseClient, dir: string): Promise<void> {
    await c.init(INIT);
    const orig = await c.lookup(FUSE_ROOT_ID, 'dir');
    const bind = await c.lookup(FUSE_ROOT_ID, 'bind');
    expect([orig.attr.flags, bind.attr.flags]).toEqual([0, FUSE_ATTR_SUBMOUNT]);
    // One host directory reached through two mounts is two inodes, as in virtiofsd: one nodeid would be one guest
    // directory with two parents (or one inode shared by two guest superblocks).
    expect(bind.attr.ino).toBe(orig.attr.ino);
    expect(bind.nodeid).not.toBe(orig.nodeid);
    const innerOrig = await c.lookup(orig.nodeid, 'inner');
    const innerBind = await c.lookup(bind.nodeid, 'inner');
    expect(innerBind.nodeid).not.toBe(innerOrig.nodeid);
    expect([innerOrig.attr.flags, innerBind.attr.flags]).toEqual([0, 0]);
    // Looked up again, each path keeps its own inode.
    expect((await c.lookup(bind.nodeid, 'inner')).nodeid).toBe(innerBind.nodeid);
    expect((await c.lookup(orig.nodeid, 'inner')).nodeid).toBe(innerOrig.nodeid);
    const fOrig = await c.lookup(orig.nodeid, 'f');
    const fBind = await c.lookup(bind.nodeid, 'f');
    expect(fBind.nodeid).not.toBe(fOrig.nodeid);
    // Still one file: a write through the bind mount is read through the original path.
    const h = await c.open(fBind.nodeid, 1 /* O_WRONLY */);
    await c.write(fBind.nodeid, h.fh, 0, Buffer.from('two'));
    await c.release(fBind.nodeid, h.fh);
    expect(readFileSync(join(dir, 'dir', 'f'), 'utf8')).toBe('two');
    // A directory made inside the bind mount is on its parent's mount.
    expect((await c.mkdir(bind.nodeid, 'made')).attr.flags).toBe(0);
    const made = await c.create(innerBind.nodeid, 'g', 0o101 /* O_WRONLY|O_CREAT */, 0o644);
    expect(made.entry.attr.flags).toBe(0);
    await c.release(made.entry.nodeid, made.fh);
    const listed = await c.readdirplus(FUSE_ROOT_ID, (await c.opendir(FUSE_ROOT_ID)).fh, 0n);
    const byName = new Map(listed.map((e) => [Buffer.from(e.dirent.name).toString(), e.entry]));
    expect([byName.get('dir')?.attr.flags, byName.get('bind')?.attr.flags]).toEqual([0, FUSE_ATTR_SUBMOUNT]);
    expect(byName.get('bind')?.nodeid).toBe(bind.nodeid);
  }

  it('flags a bind mount of the same filesystem, and keeps its inodes apart from the original path', async () => {
    share = new LocalShare('kumo-fs-bind-', { announceSubmounts: true });
    withBind(share.dir);
    await expectBindIsSubmount(share.client, share.dir);
  });

  it('does the same in the daemon, whose LOOKUP and CREATE take the fast path', async () => {
    const cleanups: (() => void)[] = [];
    const dir = mkdtempSync('/tmp/kumo-fs-bind-daemon-');
    const shared = join(dir, 'share');
    mkdirSync(shared);
    withBind(shared);
    try {
      await expectBindIsSubmount(await connectFs({ who: 'kumo' }, dir, shared, cleanups), shared);
    } finally {
      spawnSync('umount', ['-l', join(shared, 'bind')]);
      mounted = null;
      for (const f of cleanups.reverse()) f();
    }
  });

  it('with --no-announce-submounts neither offers FUSE_SUBMOUNTS nor flags mount points', async () => {
    const c = withMount(false).client;
    await c.init(INIT);
    expect(c.granted(Init.SUBMOUNTS)).toBe(false);
    expect((await c.lookup(FUSE_ROOT_ID, 'sub')).attr.flags).toBe(0);
  });

  it('flags no mount point for a guest that did not offer FUSE_SUBMOUNTS, as virtiofsd', async () => {
    const c = withMount(true).client;
    await c.init(INIT & ~Init.SUBMOUNTS);
    expect(c.granted(Init.SUBMOUNTS)).toBe(false);
    expect((await c.lookup(FUSE_ROOT_ID, 'sub')).attr.flags).toBe(0);
  });

  it("SYNCFS syncs the file system of the nodeid it names (a submount's), and refuses one never looked up", async () => {
    share = new LocalShare('kumo-fs-syncfs-', { announceSubmounts: true });
    const img = join(share.dir, '..', `${share.dir.split('/').pop()}.ext4`);
    writeFileSync(img, Buffer.alloc(32 << 20));
    expect(spawnSync('mkfs.ext4', ['-q', '-F', img]).status).toBe(0);
    mkdirSync(join(share.dir, 'sub'));
    const r = spawnSync('mount', ['-o', 'loop', img, join(share.dir, 'sub')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    mounted = join(share.dir, 'sub');
    try {
      const loop = spawnSync('findmnt', ['-no', 'SOURCE', mounted], { encoding: 'utf8' }).stdout.trim().split('/').pop();
      const written = (): number => Number(readFileSync(`/sys/block/${loop}/stat`, 'utf8').trim().split(/\s+/)[6]);
      const c = share.client;
      await c.init(INIT);
      const sub = await c.lookup(FUSE_ROOT_ID, 'sub');
      // 4 MiB the host wrote into the submount and has not written back (that waits 30 s).
      writeFileSync(join(mounted, 'dirty'), Buffer.alloc(4 << 20, 1));
      const before = written();
      await c.syncfs(FUSE_ROOT_ID);
      expect(written() - before).toBeLessThan(8192); // the share's own file system: not the loop device
      await c.syncfs(sub.nodeid);
      expect(written() - before).toBeGreaterThanOrEqual(8192); // 4 MiB in 512-byte sectors
      expect(await c.syncfs(424242).then(() => 'ok', (e: Error) => e.message)).toMatch(/EBADF/);
      await c.forget(sub.nodeid, 1);
    } finally {
      // Lazily: the share still holds fds on the submount until afterEach closes it (a plain umount is EBUSY then).
      spawnSync('umount', ['-l', mounted]);
      mounted = null;
      rmSync(img, { force: true });
    }
  });
});
