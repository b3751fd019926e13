import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, Init } from '../../protocol/fuse/index.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
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

  it('with --no-announce-submounts neither offers FUSE_SUBMOUNTS nor flags mount points', async () => {
    const c = withMount(false).client;
    await c.init(INIT);
    expect(c.granted(Init.SUBMOUNTS)).toBe(false);
    expect((await c.lookup(FUSE_ROOT_ID, 'sub')).attr.flags).toBe(0);
  });
});
