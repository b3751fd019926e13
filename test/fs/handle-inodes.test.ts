import { afterEach, expect, test } from 'vitest';
import { readdirSync } from 'node:fs';
import { LocalShare } from './local-transport.js';
import { FUSE_ROOT_ID, FuseReplyError } from '../../protocol/fuse/index.js';

let share: LocalShare | null = null;
afterEach(() => {
  share?.close();
  share = null;
});

// With --inode-file-handles an inode needs no fd, so the guest's fd limit did not bound the inode table: a guest that
// creates, closes and unlinks one name over and over without FORGET left the host no file and the daemon one more inode
// each time (40,000 rounds: 40,000 inodes, heap +16 MB, RSS +60 MB, and on without end).
test('a guest that never sends FORGET holds no more handle inodes than fds it may hold, and is refused before a creation', async () => {
  const s = (share = new LocalShare('kumo-handle-inodes-', { inodeFileHandles: 'prefer', openInodeFds: 16, guestFdLimit: 300 }));
  await s.client.init();
  let made = 0;
  let refused: unknown = null;
  const nodeids: number[] = [];
  for (let k = 0; k < 1000 && refused === null; k++) {
    try {
      const r = await s.client.create(FUSE_ROOT_ID, 'f', 0o2 | 0o100, 0o644);
      nodeids.push(r.entry.nodeid);
      await s.client.release(r.entry.nodeid, r.fh);
      await s.client.unlink(FUSE_ROOT_ID, 'f');
      made++;
    } catch (e) {
      refused = e;
    }
  }
  expect(refused).toBeInstanceOf(FuseReplyError);
  expect((refused as FuseReplyError).code).toBe('ENFILE');
  expect(made).toBeLessThanOrEqual(300);
  expect(s.fs.inodes.size).toBeLessThanOrEqual(301);
  // Refused before the creation: the guest was told no file was made, and none was.
  expect(readdirSync(s.dir)).toEqual([]);
  // FORGET gives the room back.
  for (const n of nodeids) await s.client.forget(n, 1);
  const r = await s.client.create(FUSE_ROOT_ID, 'g', 0o2 | 0o100, 0o644);
  await s.client.release(r.entry.nodeid, r.fh);
  expect(readdirSync(s.dir)).toEqual(['g']);
});
