import { afterEach, expect, test } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connectFs, errCode } from './daemons.js';
import { FUSE_ROOT_ID, type FuseClient } from '../../protocol/fuse/index.js';
import { GuestMemory } from '../../protocol/memory/index.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0)) f();
});

// With --inode-file-handles the daemon keeps, besides its cache of open inode fds, as many fds of inodes the guest
// unlinked but still knows (no handle opens those again). A guest that had both full and then opened files until
// refused took the fds kept for the front-end: its next ADD_MEM_REG found none, and the connection was dropped.
test('a guest holding unlinked inodes and every fd it may still leaves the front-end its fds (--inode-file-handles)', async () => {
  const base = mkdtempSync('/tmp/kumo-fd-reserve-');
  const share = `${base}/share`;
  mkdirSync(share);
  mkdirSync(`${base}/run`);
  writeFileSync(`${share}/x`, 'x');
  let extra: GuestMemory | null = null;
  cleanups.push(() => {
    extra?.close();
    rmSync(base, { recursive: true, force: true });
  });
  const c: FuseClient = await connectFs({ who: 'kumo', kumoArgs: ['--rlimit-nofile=4000', '--inode-file-handles=prefer'], env: { KUMO_FS_OPEN_INODE_FDS: '500' } }, `${base}/run`, share, cleanups);
  await c.init();
  for (let i = 0; i < 1100; i++) {
    const r = await c.create(FUSE_ROOT_ID, `f${i}`, 0o2 | 0o100, 0o644);
    await c.release(r.entry.nodeid, r.fh);
    await c.unlink(FUSE_ROOT_ID, `f${i}`);
    if (i % 64 === 0) await c.statfs(); // requests end with the fd cache trimmed
  }
  const x = await c.lookup(FUSE_ROOT_ID, 'x');
  let last = 'ok';
  for (let i = 0; i < 4000 && last === 'ok'; i++) last = await errCode(c.open(x.nodeid, 0));
  expect(last).toBe('ENFILE');
  extra = GuestMemory.anonymous([{ guestAddr: 1 << 30, size: 2 << 20 }]);
  const r = extra.regions[0];
  const fe = (c as unknown as { t: { dev: { frontend: { addMemRegion: (r: unknown, fd: number) => void } } } }).t.dev.frontend;
  fe.addMemRegion({ guestAddr: r.guestAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.fdOffset }, r.fd);
  expect(await errCode(c.statfs())).toBe('ok');
}, 120_000);
