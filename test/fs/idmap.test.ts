import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Fattr, FUSE_ROOT_ID, Init, type FuseClient } from '../../protocol/fuse/index.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { FORBIDDEN, IdMap, parseIdRule } from '../../backends/virtiofsd/idmap.js';
import { connectFs, errCode } from './daemons.js';

const O_RDWR = 2;
const O_CREAT = 0o100;
const root = process.getuid?.() === 0;
if (!root) console.log('--translate-uid/gid share tests skipped: giving host files other owners needs root');

const args = (...extra: string[]): string[] => ['--socket-path=/s', '--shared-dir=/d', ...extra];

describe('--translate-uid / --translate-gid rules', () => {
  it('parse with virtiofsd syntax and land in the share options', () => {
    expect(parseIdRule('translate-uid', 'squash-guest:0:1000:4294967295')).toEqual({ type: 'squash-guest', from: 0, to: 1000, count: 4294967295 });
    expect(parseIdRule('translate-uid', 'forbid-guest:5:10')).toEqual({ type: 'forbid-guest', from: 5, to: 0, count: 10 });
    const cfg = parseArgs(args('--translate-uid=map:1000:5000:10', '--translate-uid', 'host:0:0:1', '--translate-gid=squash-host:0:100:65536'));
    expect(cfg.fs.translateUid.map((r) => r.type)).toEqual(['map', 'host']);
    expect(cfg.fs.translateGid).toEqual([{ type: 'squash-host', from: 0, to: 100, count: 65536 }]);
    expect(parseArgs(args()).fs.translateUid).toEqual([]);
  });

  it('takes the rule spellings virtiofsd takes: any separator but - and _, the type in any case, + before a number, an empty range', () => {
    expect(parseIdRule('translate-uid', 'map/1000/2000/10')).toEqual({ type: 'map', from: 1000, to: 2000, count: 10 });
    expect(parseIdRule('translate-uid', 'Squash-Guest;0;+1000;1')).toEqual({ type: 'squash-guest', from: 0, to: 1000, count: 1 });
    expect(parseIdRule('translate-gid', 'FORBID-GUEST:7:+3')).toEqual({ type: 'forbid-guest', from: 7, to: 0, count: 3 });
    expect(parseIdRule('translate-uid', 'map:0:1:0')).toEqual({ type: 'map', from: 0, to: 1, count: 0 });
    expect(parseIdRule('translate-uid', 'guest:4294967294:0:1').from).toBe(4294967294);
    expect(() => parseArgs(args('--translate-uid=map:0:1:0', '--translate-uid=map:0:5:1'))).not.toThrow();
  });

  it.each([
    ['squash:0:1:1', /unknown type 'squash'/],
    ['map:0:1', /form map:FROM:TO:COUNT/],
    ['forbid-guest:0:1:1', /form forbid-guest:FROM:COUNT/],
    ['map:-1:1:1', /FROM must be a number/],
    ['map:0:x:1', /TO must be a number/],
    ['map:0:1:4294967296', /COUNT must be a number/],
    ['guest:4294967295:0:1', /runs past ID 4294967294/],
    ['map:0:4294967295:1', /maps past ID 4294967294/],
    ['map-1:2:3', /unknown type 'map-1'/],
  ])('refuses %s', (rule, why) => {
    expect(() => parseArgs(args(`--translate-uid=${rule}`))).toThrow(why);
  });

  it('refuses ranges that overlap in one direction, and allows them across directions', () => {
    expect(() => parseArgs(args('--translate-uid=forbid-guest:1001:1999', '--translate-uid=map:2000:2000:1'))).toThrow(/'map:2000:2000:1' overlaps 'forbid-guest:1001:1999'/);
    expect(() => parseArgs(args('--translate-gid=squash-host:0:5:10', '--translate-gid=map:100:9:1'))).toThrow(/translate-gid: 'map:100:9:1' overlaps/);
    // squash-guest covers guest IDs, host covers host IDs: the common "squash in, map back" pair.
    expect(() => parseArgs(args('--translate-uid=squash-guest:0:1000:4294967295', '--translate-uid=host:1000:0:1'))).not.toThrow();
  });

  it('translates each direction on its own; IDs no rule covers pass unchanged', () => {
    const m = new IdMap([
      parseIdRule('u', 'map:1000:5000:10'),
      parseIdRule('u', 'squash-guest:2000:4242:100'),
      parseIdRule('u', 'squash-host:7000:77:100'),
      parseIdRule('u', 'forbid-guest:666:1'),
      parseIdRule('u', 'guest:10:20:5'),
    ], 'translate-uid');
    expect([m.toHost(1000), m.toHost(1009), m.toHost(1010)]).toEqual([5000, 5009, 1010]);
    expect([m.toGuest(5000), m.toGuest(5009), m.toGuest(5010)]).toEqual([1000, 1009, 5010]);
    expect([m.toHost(2000), m.toHost(2099), m.toHost(2100)]).toEqual([4242, 4242, 2100]);
    expect([m.toGuest(7000), m.toGuest(7099), m.toGuest(6999)]).toEqual([77, 77, 6999]);
    expect([m.toHost(666), m.toHost(665), m.toGuest(666)]).toEqual([FORBIDDEN, 665, 666]);
    // guest: one way only, so host 20 shows as 20.
    expect([m.toHost(12), m.toGuest(22)]).toEqual([22, 22]);
    expect(m.toHost(0xffffffff)).toBe(0xffffffff);
  });
});

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

const RULES = [
  '--translate-uid=map:1000:5000:10', '--translate-uid=squash-guest:2000:4242:100', '--translate-uid=squash-host:7000:77:100',
  '--translate-uid=forbid-guest:666:1',
  '--translate-gid=map:1000:6000:10', '--translate-gid=squash-guest:2000:4343:100', '--translate-gid=forbid-guest:667:1',
];

async function share(extra: string[] = RULES): Promise<{ c: FuseClient; dir: string }> {
  const base = mkdtempSync('/tmp/kumo-fs-idmap-');
  const dir = join(base, 'share');
  mkdirSync(dir);
  chmodSync(dir, 0o777);
  const c = await connectFs({ who: 'kumo', kumoArgs: extra }, base, dir, cleanups);
  await c.init();
  return { c, dir };
}

const owner = (p: string): string => {
  const st = lstatSync(p);
  return `${st.uid}:${st.gid}`;
};

describe.skipIf(!root)('--translate-uid / --translate-gid on a share', () => {
  it('creates files with the host owner the rules give, and shows guest owners back', async () => {
    const { c, dir } = await share();
    c.caller = { uid: 1001, gid: 1002, pid: 1 };
    const f = await c.create(FUSE_ROOT_ID, 'mapped', O_RDWR | O_CREAT, 0o100644);
    await c.release(f.entry.nodeid, f.fh);
    expect(owner(join(dir, 'mapped'))).toBe('5001:6002');
    expect([f.entry.attr.uid, f.entry.attr.gid]).toEqual([1001, 1002]);
    const d = await c.mkdir(FUSE_ROOT_ID, 'dir', 0o755);
    expect(owner(join(dir, 'dir'))).toBe('5001:6002');
    expect([d.attr.uid, d.attr.gid]).toEqual([1001, 1002]);
    c.caller = { uid: 2050, gid: 2051, pid: 1 };
    await c.symlink(FUSE_ROOT_ID, 'squashed', 'target');
    await c.mknod(FUSE_ROOT_ID, 'fifo', 0o010644);
    expect([owner(join(dir, 'squashed')), owner(join(dir, 'fifo'))]).toEqual(['4242:4343', '4242:4343']);
    c.caller = { uid: 3000, gid: 3000, pid: 1 };
    await c.mkdir(FUSE_ROOT_ID, 'plain', 0o755);
    expect(owner(join(dir, 'plain'))).toBe('3000:3000');
    // Host owners shown to the guest: LOOKUP (fast path), GETATTR and READDIRPLUS.
    writeFileSync(join(dir, 'host-file'), 'x');
    chownSync(join(dir, 'host-file'), 7050, 6005);
    const e = await c.lookup(FUSE_ROOT_ID, 'host-file');
    expect([e.attr.uid, e.attr.gid]).toEqual([77, 1005]);
    const a = await c.getattr(e.nodeid);
    expect([a.uid, a.gid]).toEqual([77, 1005]);
    const { fh } = await c.opendir(FUSE_ROOT_ID);
    const entries = await c.readdirplus(FUSE_ROOT_ID, fh, 0n, 65536);
    await c.release(FUSE_ROOT_ID, fh, true);
    const seen = Object.fromEntries(entries.filter((x) => x.entry.nodeid !== 0).map((x) => [Buffer.from(x.dirent.name).toString(), `${x.entry.attr.uid}:${x.entry.attr.gid}`]));
    expect(seen).toMatchObject({ 'host-file': '77:1005', mapped: '1001:1002', squashed: '4242:4343', plain: '3000:3000' });
  }, 30_000);

  it('LINK works after a creation as another caller (the request thread then has other credentials)', async () => {
    const { c, dir } = await share([]);
    writeFileSync(join(dir, 'f'), 'x');
    symlinkSync('target', join(dir, 's'));
    const f = await c.lookup(FUSE_ROOT_ID, 'f');
    const s = await c.lookup(FUSE_ROOT_ID, 's');
    c.caller = { uid: 1001, gid: 1001, pid: 1 };
    await c.mkdir(FUSE_ROOT_ID, 'by-user', 0o755);
    c.caller = { uid: 0, gid: 0, pid: 1 };
    expect((await c.link(f.nodeid, FUSE_ROOT_ID, 'f2')).attr.nlink).toBe(2);
    expect(readFileSync(join(dir, 'f2'), 'utf8')).toBe('x');
    // A symlink is linked itself, not followed to its target.
    await c.link(s.nodeid, FUSE_ROOT_ID, 's2');
    expect(readlinkSync(join(dir, 's2'))).toBe('target');
    // A file removed on the host meanwhile cannot be linked back in.
    writeFileSync(join(dir, 'gone'), 'y');
    const g = await c.lookup(FUSE_ROOT_ID, 'gone');
    rmSync(join(dir, 'gone'));
    expect(await errCode(c.link(g.nodeid, FUSE_ROOT_ID, 'back'))).toBe('ENOENT');
  }, 30_000);

  it('refuses a caller claiming uid or gid 4294967295, which no rule covers and setresuid reads as "unchanged"', async () => {
    // It used to create as the daemon itself (host root) past squash-guest:0:1000:4294967295 and forbid-guest rules.
    const { c, dir } = await share(['--translate-uid=squash-guest:0:1000:4294967295', '--translate-gid=squash-guest:0:1000:4294967295']);
    for (const [uid, gid] of [[0xffffffff, 0], [0, 0xffffffff]]) {
      c.caller = { uid, gid, pid: 1 };
      expect(await errCode(c.create(FUSE_ROOT_ID, `f${uid}-${gid}`, O_RDWR | O_CREAT, 0o100644))).toBe('EINVAL');
      expect(await errCode(c.mkdir(FUSE_ROOT_ID, `d${uid}-${gid}`, 0o755))).toBe('EINVAL');
    }
    c.caller = { uid: 0, gid: 0, pid: 1 };
    await c.mkdir(FUSE_ROOT_ID, 'squashed', 0o755);
    expect(owner(join(dir, 'squashed'))).toBe('1000:1000');
    expect(readdirSync(dir)).toEqual(['squashed']);
  }, 30_000);

  it('translates chown, and refuses forbidden guest IDs without touching the host', async () => {
    const { c, dir } = await share();
    c.caller = { uid: 1001, gid: 1001, pid: 1 };
    const f = await c.create(FUSE_ROOT_ID, 'f', O_RDWR | O_CREAT, 0o100644);
    await c.release(f.entry.nodeid, f.fh);
    const n = f.entry.nodeid;
    c.caller = { uid: 0, gid: 0, pid: 1 };
    const a = await c.setattr(n, { valid: Fattr.UID | Fattr.GID, uid: 1005, gid: 2010 });
    expect(owner(join(dir, 'f'))).toBe('5005:4343');
    expect([a.uid, a.gid]).toEqual([1005, 4343]);
    expect(await errCode(c.setattr(n, { valid: Fattr.UID, uid: 666 }))).toBe('EPERM');
    expect(await errCode(c.setattr(n, { valid: Fattr.GID, gid: 667 }))).toBe('EPERM');
    expect(owner(join(dir, 'f'))).toBe('5005:4343');
    c.caller = { uid: 666, gid: 0, pid: 1 };
    expect(await errCode(c.create(FUSE_ROOT_ID, 'no-file', O_RDWR | O_CREAT, 0o100644))).toBe('EPERM');
    expect(await errCode(c.mkdir(FUSE_ROOT_ID, 'no-dir', 0o755))).toBe('EPERM');
    c.caller = { uid: 0, gid: 667, pid: 1 };
    expect(await errCode(c.symlink(FUSE_ROOT_ID, 'no-link', 't'))).toBe('EPERM');
    expect(['no-file', 'no-dir', 'no-link'].filter((x) => existsSync(join(dir, x)))).toEqual([]);
    // Other requests from a forbidden caller still work: only IDs that would reach the host are refused.
    c.caller = { uid: 666, gid: 667, pid: 1 };
    expect((await c.lookup(FUSE_ROOT_ID, 'f')).attr.uid).toBe(1005);
  }, 30_000);

  it('a daemon without privileges squashes every guest ID onto its own, so any guest user can create files', async () => {
    const base = mkdtempSync('/tmp/kumo-fs-idmap-');
    const dir = join(base, 'share');
    mkdirSync(dir);
    // No capability at all (empty bounding set): it cannot switch IDs, chown or take groups. It keeps uid 0 only
    // so that it can read the code wherever it is checked out (node checks access() by real uid).
    const wrap = ['setpriv', '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--'];
    const squash = ['--sandbox=none', '--translate-uid=squash-guest:0:0:4294967295', '--translate-gid=squash-guest:0:0:4294967295'];
    const c = await connectFs({ who: 'kumo', kumoArgs: squash, wrap }, base, dir, cleanups);
    await c.init(Init.ASYNC_READ | Init.INIT_EXT | Init.CREATE_SUPP_GROUP);
    c.caller = { uid: 1000, gid: 1000, pid: 1 };
    c.suppGroup = 123; // it cannot take the group (no CAP_SETGID) and creates without it
    const f = await c.create(FUSE_ROOT_ID, 'by-guest-user', O_RDWR | O_CREAT, 0o100644);
    await c.release(f.entry.nodeid, f.fh);
    await c.mkdir(FUSE_ROOT_ID, 'dir', 0o755);
    expect([owner(join(dir, 'by-guest-user')), owner(join(dir, 'dir'))]).toEqual(['0:0', '0:0']);
    expect(await errCode(c.setattr(f.entry.nodeid, { valid: Fattr.UID, uid: 5 }))).toBe('ok');
    expect(owner(join(dir, 'by-guest-user'))).toBe('0:0');
  }, 30_000);

  it('without rules, owners pass unchanged', async () => {
    const { c, dir } = await share([]);
    c.caller = { uid: 1001, gid: 1002, pid: 1 };
    const d = await c.mkdir(FUSE_ROOT_ID, 'dir', 0o755);
    expect(owner(join(dir, 'dir'))).toBe('1001:1002');
    expect([d.attr.uid, d.attr.gid]).toEqual([1001, 1002]);
  }, 30_000);
});
