// Another writer on the share (the host, or a second guest through a second daemon) renames fresh files over a name
// while the guest makes that name with CREATE or LINK. The entry the daemon answers with must be the inode it just
// made: it looked the name up again instead, so the guest's kernel attached its open file, or its new link, to the
// other writer's file (CREATE: ~0.2% of rounds; LINK: QEMU's virtiofsd answers with the linked inode too).
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, FuseReplyError, type FuseClient } from '../../protocol/fuse/index.js';
import { connectFs } from './daemons.js';
import { LocalShare } from './local-transport.js';

const O_WRONLY = 1;
const O_CREAT = 0o100;
const ROUNDS_MS = 2500;
/** Rounds run past ROUNDS_MS until this many (a loaded host ran under 200 in 2.5 s), for at most ROUNDS_CAP_MS. */
const MIN_ROUNDS = 400;
const ROUNDS_CAP_MS = 20_000;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** Host side: keeps renaming a fresh file over share/x. */
function startRacer(share: string): void {
  const racer = spawn(process.execPath, ['-e', `const fs = require('fs'); process.chdir(${JSON.stringify(share)});
    for (;;) { try { fs.writeFileSync('o', ''); fs.renameSync('o', 'x'); } catch {} }`], { stdio: 'ignore' });
  cleanups.push(() => racer.kill('SIGKILL'));
}

/** Rounds of `op` for ROUNDS_MS (and MIN_ROUNDS at least); how many answered with an entry that was not the inode made. */
async function race(c: FuseClient, share: string, op: 'create' | 'link'): Promise<{ rounds: number; wrong: number }> {
  writeFileSync(join(share, 'src'), 'SRC');
  const src = await c.lookup(FUSE_ROOT_ID, 'src');
  startRacer(share);
  let rounds = 0;
  let wrong = 0;
  const t0 = Date.now();
  for (; Date.now() - t0 < ROUNDS_MS || (rounds < MIN_ROUNDS && Date.now() - t0 < ROUNDS_CAP_MS); rounds++) {
    try {
      if (op === 'create') {
        const r = await c.create(FUSE_ROOT_ID, 'x', O_WRONLY | O_CREAT, 0o644);
        if ((await c.getattr(r.entry.nodeid, r.fh)).ino !== r.entry.attr.ino) wrong++;
        await c.release(r.entry.nodeid, r.fh);
        await c.forget(r.entry.nodeid, 1);
      } else {
        const l = await c.link(src.nodeid, FUSE_ROOT_ID, 'x');
        if (l.nodeid !== src.nodeid || l.attr.ino !== src.attr.ino) wrong++;
        await c.forget(l.nodeid, 1);
      }
    } catch (e) {
      if (!(e instanceof FuseReplyError)) throw e; // EEXIST when the racer's file is there first
    }
    await c.unlink(FUSE_ROOT_ID, 'x').catch(() => undefined);
  }
  return { rounds, wrong };
}

describe('entries of names another writer renames files over', () => {
  it.each(['create', 'link'] as const)('%s answers with the inode it made (in-process server)', async (op) => {
    const s = new LocalShare('kumo-entry-race-');
    cleanups.push(() => s.close());
    await s.client.init();
    const r = await race(s.client, s.dir, op);
    expect(r.rounds).toBeGreaterThan(300);
    expect(r.wrong, `${r.wrong} of ${r.rounds} rounds`).toBe(0);
  }, 30_000);

  it('CREATE on the request thread\'s fast path answers with the inode it opened (daemon)', async () => {
    const base = mkdtempSync('/tmp/kumo-entry-race-');
    const share = join(base, 'share');
    mkdirSync(share);
    const c = await connectFs({ who: 'kumo' }, base, share, cleanups);
    await c.init();
    const r = await race(c, share, 'create');
    expect(r.rounds).toBeGreaterThan(300);
    expect(r.wrong, `${r.wrong} of ${r.rounds} rounds`).toBe(0);
  }, 30_000);
});
