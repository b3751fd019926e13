// A dead mount point inside the share (a FUSE, sshfs or NFS mount whose server went away): stat of it fails with
// ENOTCONN. READDIRPLUS of its directory failed with that error, and a guest listing the directory got only the
// entries before it; the host lists the directory whole. The entry is now listed without attributes (nodeid 0, as
// for . and ..), and a LOOKUP of it answers the error, as stat(2) on the host does.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { errCode } from './daemons.js';
import { LocalShare } from './local-transport.js';
import { mountTinyFuse, tinyFuseUnavailable } from './tiny-fuse.js';

const why = tinyFuseUnavailable();
if (why !== null) console.log(`test/fs/dead-mount.test.ts skipped: ${why}`);

const shares: LocalShare[] = [];
afterEach(() => {
  for (const s of shares.splice(0)) {
    spawnSync('umount', ['-l', join(s.dir, 'dead')]);
    s.close();
  }
});

describe.skipIf(why !== null)('a dead mount point inside the share', () => {
  it('READDIRPLUS lists the whole directory, the dead entry without attributes; LOOKUP of it is ENOTCONN', async () => {
    const s = new LocalShare('kumo-fs-dead-');
    shares.push(s);
    await s.client.init();
    const names = Array.from({ length: 20 }, (_, i) => `f${String(i).padStart(2, '0')}`);
    for (const n of names) writeFileSync(join(s.dir, n), n);
    mkdirSync(join(s.dir, 'dead'));
    expect(mountTinyFuse(join(s.dir, 'dead'), 'long-names')).toContain('mounted');
    // The server goes away; the mount stays, and every access to it fails.
    spawnSync('pkill', ['-KILL', '-f', `tiny-fuse.py ${join(s.dir, 'dead')}`]);
    for (let i = 0; i < 50 && spawnSync('stat', [join(s.dir, 'dead')]).status === 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await errCode(s.client.lookup(FUSE_ROOT_ID, 'dead'))).toBe('ENOTCONN');
    const d = await s.client.opendir(FUSE_ROOT_ID);
    const seen = new Map<string, number>();
    for (let off = 0n; ;) {
      const page = await s.client.readdirplus(FUSE_ROOT_ID, d.fh, off, 512);
      if (page.length === 0) break;
      for (const e of page) seen.set(Buffer.from(e.dirent.name).toString(), e.entry.nodeid);
      off = page[page.length - 1].dirent.off;
    }
    expect([...seen.keys()].sort()).toEqual(['.', '..', 'dead', ...names].sort());
    expect(seen.get('dead')).toBe(0);
    expect(seen.get('f05')).toBeGreaterThan(0);
  });
});
