// Names over 255 bytes: the host file system decides (the daemon refused them, so a guest could neither open nor list
// a directory holding one on a FUSE, vfat or exfat mount inside the share).
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { errCode } from './daemons.js';
import { LocalShare } from './local-transport.js';
import { mountTinyFuse, tinyFuseUnavailable } from './tiny-fuse.js';

const LONG = 'é'.repeat(150); // 300 bytes

const why = tinyFuseUnavailable();
if (why !== null) console.log(`test/fs/long-names.test.ts skipped: ${why}`);

const shares: LocalShare[] = [];
afterEach(() => {
  for (const s of shares.splice(0)) {
    spawnSync('umount', ['-l', join(s.dir, 'fm')]);
    s.close();
  }
});

describe.skipIf(why !== null)('names longer than 255 bytes', () => {
  it('a 300-byte name on a FUSE mount inside the share is looked up, read and listed; ext4 still says ENAMETOOLONG itself', async () => {
    const s = new LocalShare('kumo-fs-names-');
    shares.push(s);
    await s.client.init();
    mkdirSync(join(s.dir, 'fm'));
    const r = { stdout: mountTinyFuse(join(s.dir, 'fm'), 'long-names') };
    expect(r.stdout).toContain('mounted');
    const fm = (await s.client.lookup(FUSE_ROOT_ID, 'fm')).nodeid;
    const e = await s.client.lookup(fm, LONG);
    const { fh } = await s.client.open(e.nodeid, 0);
    expect(Buffer.from(await s.client.read(e.nodeid, fh, 0, 100)).toString()).toBe('hello\n');
    const d = await s.client.opendir(fm);
    const names = (await s.client.readdirplus(fm, d.fh, 0n, 4096)).map((x) => Buffer.from(x.dirent.name).toString());
    expect(names).toEqual(expect.arrayContaining([LONG, 'short']));
    expect(await errCode(s.client.lookup(FUSE_ROOT_ID, 'x'.repeat(256)))).toBe('ENAMETOOLONG');
    expect(await errCode(s.client.lookup(fm, 'x'.repeat(1025)))).toBe('ENAMETOOLONG');
  });
});
