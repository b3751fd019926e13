import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeSuppGroup, encodeSuppGroups, encodeSecctx, FUSE_ROOT_ID, Init, type FuseClient } from '../../protocol/fuse/index.js';
import { connectFs, errCode } from './daemons.js';

const O_RDWR = 2;
const O_CREAT = 0o100;
const INIT = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT | Init.CREATE_SUPP_GROUP;
const root = process.getuid?.() === 0;
if (!root) console.log('supplementary-group creation tests skipped: a group-owned directory and other callers need root');

describe('the supplementary-groups request extension', () => {
  it('is found among the extensions and checked', () => {
    const groups = encodeSuppGroups([4000]);
    const label = encodeSecctx(null);
    const args = Buffer.concat([Buffer.from('name\0'), label, groups]);
    expect(decodeSuppGroup(args, (label.length + groups.length) / 8)).toBe(4000);
    expect(decodeSuppGroup(args, 0)).toBeNull();
    expect(decodeSuppGroup(Buffer.concat([Buffer.from('name\0'), label]), label.length / 8)).toBeNull();
    const bad = Buffer.from(groups);
    bad.writeUInt32LE(0, 8); // no groups
    expect(() => decodeSuppGroup(bad, bad.length / 8)).toThrow(/bad supplementary groups extension/);
    bad.writeUInt32LE(64, 0); // runs past the request
    expect(() => decodeSuppGroup(bad, bad.length / 8)).toThrow(/bad request extension size/);
  });
});

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** A share with g/ owned by group 4000 (group-writable); the caller is user 1000, group 1000. */
async function share(wrap?: string[], offer = INIT): Promise<{ c: FuseClient; dir: string; g: number }> {
  const base = mkdtempSync('/tmp/kumo-fs-supp-');
  const dir = join(base, 'share');
  mkdirSync(join(dir, 'g'), { recursive: true });
  chownSync(join(dir, 'g'), 0, 4000);
  chmodSync(join(dir, 'g'), 0o775);
  const c = await connectFs({ who: 'kumo', wrap }, base, dir, cleanups);
  const init = await c.init(offer);
  expect((BigInt(init.flags) | (BigInt(init.flags2) << 32n)) & Init.CREATE_SUPP_GROUP).toBe(offer & Init.CREATE_SUPP_GROUP);
  const g = (await c.lookup(FUSE_ROOT_ID, 'g')).nodeid;
  c.caller = { uid: 1000, gid: 1000, pid: 1 };
  return { c, dir, g };
}

/** Makes a file, a directory, a FIFO and a symlink in g (host path `host`); each must belong to the caller 1000:1000. */
async function createEachKind(c: FuseClient, g: number, host: string): Promise<void> {
  const f = await c.create(g, 'file', O_RDWR | O_CREAT, 0o100644);
  await c.release(f.entry.nodeid, f.fh);
  await c.mkdir(g, 'dir', 0o755);
  await c.mknod(g, 'fifo', 0o010644);
  await c.symlink(g, 'link', 'file');
  for (const n of ['file', 'dir', 'fifo', 'link']) expect(`${lstatSync(join(host, n)).uid}:${lstatSync(join(host, n)).gid}`, n).toBe('1000:1000');
}

describe.skipIf(!root)('FUSE_CREATE_SUPP_GROUP: creations by a member of the directory group through a supplementary group', () => {
  it('succeed when the request carries the group, as the guest kernel allowed them, and fail without it', async () => {
    const { c, dir, g } = await share();
    // Without the group the host refuses what the guest's own check let through.
    expect(await errCode(c.create(g, 'no', O_RDWR | O_CREAT, 0o100644))).toBe('EACCES');
    expect(await errCode(c.mkdir(g, 'no-dir', 0o755))).toBe('EACCES');
    c.suppGroup = 4000;
    await createEachKind(c, g, join(dir, 'g'));
    // The request thread's own groups came back: a request without the group is refused again.
    c.suppGroup = null;
    expect(await errCode(c.create(g, 'no-again', O_RDWR | O_CREAT, 0o100644))).toBe('EACCES');
    expect(['no', 'no-dir', 'no-again'].filter((n) => existsSync(join(dir, 'g', n)))).toEqual([]);
  }, 30_000);

  it('a group the caller names that the directory does not have grants nothing', async () => {
    const { c } = await share();
    c.suppGroup = 4001;
    expect(await errCode(c.mkdir((await c.lookup(FUSE_ROOT_ID, 'g')).nodeid, 'x', 0o755))).toBe('EACCES');
  }, 30_000);
});

describe.skipIf(!root)('the groups of whoever started the daemon', () => {
  it('are not a caller\'s: started with group 4000, a caller outside it cannot create in g/', async () => {
    const { c, dir, g } = await share(['setpriv', '--groups', '0,4000', '--']);
    expect(await errCode(c.create(g, 'no', O_RDWR | O_CREAT, 0o100644))).toBe('EACCES');
    expect(await errCode(c.mkdir(g, 'no-dir', 0o755))).toBe('EACCES');
    expect(await errCode(c.symlink(g, 'no-link', 'x'))).toBe('EACCES');
    expect(await errCode(c.access(g, 2))).toBe('EACCES');
    expect(['no', 'no-dir', 'no-link'].filter((n) => existsSync(join(dir, 'g', n)))).toEqual([]);
    // Naming the group still works: the request thread takes it for the creation only.
    c.suppGroup = 4000;
    await c.mkdir(g, 'dir', 0o755);
    expect(lstatSync(join(dir, 'g', 'dir')).gid).toBe(1000);
  }, 30_000);
});

describe.skipIf(!root)('a guest kernel without FUSE_CREATE_SUPP_GROUP (before Linux 6.3)', () => {
  it('gets new entries made where its own check let the caller create (a group it has only as a supplementary one), owned by the caller', async () => {
    const { c, dir, g } = await share(undefined, INIT & ~Init.CREATE_SUPP_GROUP);
    await createEachKind(c, g, join(dir, 'g'));
    // Only creation: an existing file the caller may not open stays closed to it.
    chmodSync(join(dir, 'g', 'file'), 0o600);
    chownSync(join(dir, 'g', 'file'), 0, 0);
    expect(await errCode(c.create(g, 'file', O_RDWR | O_CREAT, 0o100644))).toBe('EACCES');
  }, 30_000);
});
