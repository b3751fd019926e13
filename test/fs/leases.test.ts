import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, Init, type FuseClient } from '../../protocol/fuse/index.js';
import type { FsOptions } from '../../backends/virtiofsd/options.js';
import { connectFs, errCode } from './daemons.js';
import { LocalShare } from './local-transport.js';
import { leaseHolder } from './lease-holder.js';

const INIT = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT | Init.POSIX_LOCKS;
const O_WRONLY = 1;
const O_NONBLOCK = 0o4000;
const O_CREAT = 0o100;
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});


/** A share (in-process) with one file f, INIT done; returns its client and f's nodeid. */
async function shareWithFile(opts: Partial<FsOptions>): Promise<{ c: FuseClient; f: number; path: string }> {
  const s = new LocalShare('kumo-fs-lease-', opts);
  cleanups.push(() => s.close());
  writeFileSync(join(s.dir, 'f'), 'x');
  await s.client.init(INIT);
  return { c: s.client, f: (await s.client.lookup(FUSE_ROOT_ID, 'f')).nodeid, path: join(s.dir, 'f') };
}

describe('a file a host process holds a lease on', () => {
  it('answers xattr and lock requests at once (EWOULDBLOCK) instead of holding the request thread for lease-break-time', async () => {
    const { c, f, path } = await shareWithFile({ xattr: true, posixLock: true });
    await leaseHolder(path, cleanups);
    const t0 = Date.now();
    expect(await errCode(c.getxattr(f, 'user.a', 0))).toBe('EWOULDBLOCK');
    expect(await errCode(c.listxattr(f, 0))).toBe('EWOULDBLOCK');
    expect(await errCode(c.setxattr(f, 'user.a', Buffer.from('v')))).toBe('EWOULDBLOCK');
    expect(Date.now() - t0).toBeLessThan(2000);
  }, 30_000);

  it('answers a lock request on a read-only share at once too (its lock fd is opened read-only)', async () => {
    const { c, f, path } = await shareWithFile({ posixLock: true, readonly: true });
    await leaseHolder(path, cleanups); // (a write lease needs the file open nowhere else: no OPEN here)
    const t0 = Date.now();
    expect(await errCode(c.getlk(f, 0, 1n, { start: 0n, end: 0n, type: 0 /* F_RDLCK */, pid: 1 }))).toBe('EWOULDBLOCK');
    expect(Date.now() - t0).toBeLessThan(2000);
  }, 30_000);

  it('under a host read lease, testing for a lock and dropping none are answered without opening the file for writing', async () => {
    const { c, f, path } = await shareWithFile({ posixLock: true });
    await leaseHolder(path, cleanups, 'F_RDLCK');
    const t0 = Date.now();
    const got = await c.getlk(f, 0, 1n, { start: 0n, end: 9n, type: 1 /* F_WRLCK */, pid: 1 });
    expect(got.type).toBe(2 /* F_UNLCK: nothing in the way */);
    await c.setlk(f, 0, 1n, { start: 0n, end: 9n, type: 2 /* F_UNLCK */, pid: 1 });
    expect(Date.now() - t0).toBeLessThan(2000);
  }, 30_000);
});

/**
 * kumo-virtiofsd on a share with one file f, INIT done and f looked up, then a host process holding a read lease on f
 * that it gives up 1 s after the kernel asks it to.
 */
async function daemonWithLeasedFile(): Promise<{ c: FuseClient; f: number; share: string }> {
  const dir = mkdtempSync('/tmp/kumo-fs-lease-');
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'f'), 'x');
  const c = await connectFs({ who: 'kumo' }, dir, share, cleanups, 8);
  await c.init(INIT);
  const f = (await c.lookup(FUSE_ROOT_ID, 'f')).nodeid;
  await leaseHolder(join(share, 'f'), cleanups, 'F_RDLCK', 1000);
  return { c, f, share };
}

describe('an OPEN that must break a host lease (through the daemon)', () => {
  it('waits for the holder to give the lease up without holding up other requests; with O_NONBLOCK it is EAGAIN at once', async () => {
    const { c, f, share } = await daemonWithLeasedFile();
    const t0 = Date.now();
    let settled = '';
    const opening = c.open(f, O_WRONLY).then((r) => ((settled = 'ok'), r), (e: Error) => ((settled = 'failed'), Promise.reject(e)));
    // Served while the OPEN waits: the request thread is not blocked in open(2) for the break.
    expect((await c.getattr(f)).size).toBe(1);
    expect(await errCode(c.open(f, O_WRONLY | O_NONBLOCK))).toBe('EWOULDBLOCK');
    expect(settled).toBe('');
    const { fh } = await opening;
    const waited = Date.now() - t0;
    console.log(`OPEN behind a host read lease given up 1 s after the break: answered after ${waited} ms`);
    expect(waited).toBeGreaterThan(500);
    expect(await c.write(f, fh, 0, Buffer.from('y'))).toBe(1);
    expect(readFileSync(join(share, 'f'), 'utf8')).toBe('y');
  }, 30_000);

  it('a CREATE of an existing file waits the same way (the guest sends CREATE once its dentry expired)', async () => {
    const { c, f, share } = await daemonWithLeasedFile();
    const t0 = Date.now();
    let settled = '';
    const creating = c.create(FUSE_ROOT_ID, 'f', O_WRONLY | O_CREAT, 0o644).then((r) => ((settled = 'ok'), r), (e: Error) => ((settled = 'failed'), Promise.reject(e)));
    expect((await c.getattr(f)).size).toBe(1);
    expect(await errCode(c.create(FUSE_ROOT_ID, 'f', O_WRONLY | O_CREAT | O_NONBLOCK, 0o644))).toBe('EWOULDBLOCK');
    // A new name is made at once meanwhile.
    expect((await c.create(FUSE_ROOT_ID, 'g', O_WRONLY | O_CREAT, 0o644)).entry.nodeid).toBeGreaterThan(0);
    expect(settled).toBe('');
    const r = await creating;
    const waited = Date.now() - t0;
    console.log(`CREATE of a file behind a host read lease given up 1 s after the break: answered after ${waited} ms`);
    expect(waited).toBeGreaterThan(500);
    expect(r.entry.nodeid).toBe(f);
    expect(await c.write(f, r.fh, 0, Buffer.from('z'))).toBe(1);
    expect(readFileSync(join(share, 'f'), 'utf8')).toBe('z');
  }, 30_000);
});
