import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FuseReplyError, FUSE_ROOT_ID, type FuseClient } from '../../protocol/fuse/index.js';
import { connectFs } from './daemons.js';

// The host changes the share under a running guest: a directory the guest walks into is swapped, again and again,
// for a symlink to a directory outside the share, or moved out of the share and back. With --sandbox=none nothing but
// the daemon's own resolution (one component at a time below a held fd, no symlink followed) stands between the
// guest and the host's files, so the race is run there. No read may ever return the canary, and nothing outside the
// share may change.
const CANARY = 'CANARY-outside-the-share';
const INSIDE = 'inside';
const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** Host side: swaps share/d between the real directory and a symlink to ../outside, and moves it out and back. */
function startRacer(base: string): () => void {
  const script = `
    cd ${base}/share
    while :; do
      mv -T d parked && ln -s ../outside d && rm d && mv -T parked d
      ln -s ${base}/outside abs && mv -T abs d.abs 2>/dev/null; rm -f d.abs
      mv -T d ../moved-out && mv -T ../moved-out d
    done`;
  const racer = spawn('sh', ['-c', script], { stdio: 'ignore' });
  return () => racer.kill('SIGKILL');
}

/** What one guest request got: data it read, or the error. */
async function attempt(p: Promise<Uint8Array>): Promise<string> {
  try {
    return Buffer.from(await p).toString();
  } catch (e) {
    if (e instanceof FuseReplyError) return e.code;
    throw e;
  }
}

/** The entry, or (recorded in `seen`) the error a lookup got. */
async function lookup(c: FuseClient, parent: number, name: string, seen: Set<string>): Promise<number | null> {
  try {
    return (await c.lookup(parent, name)).nodeid;
  } catch (e) {
    if (!(e instanceof FuseReplyError)) throw e;
    seen.add(e.code);
    return null;
  }
}

/** Opens, reads and releases a file inode, recording what came back. */
async function readAll(c: FuseClient, nodeid: number, seen: Set<string>): Promise<void> {
  seen.add(await attempt(c.open(nodeid, O_RDONLY).then(async (h) => c.read(nodeid, h.fh, 0, 64).finally(() => c.release(nodeid, h.fh)))));
}

async function guestRound(c: FuseClient, seen: Set<string>): Promise<void> {
  const d = await lookup(c, FUSE_ROOT_ID, 'd', seen);
  if (d === null) return;
  const secret = await lookup(c, d, 'secret', seen);
  if (secret !== null) {
    await readAll(c, secret, seen);
    await c.forget(secret, 1);
  }
  // One level further down, through a directory that may have been swapped meanwhile.
  const sub = await lookup(c, d, 'sub', seen);
  if (sub !== null) {
    const s = await lookup(c, sub, 'secret', seen);
    if (s !== null) {
      await readAll(c, s, seen);
      await c.forget(s, 1);
    }
    await c.forget(sub, 1);
  }
  // Creations race too: they must land inside the share's tree or fail.
  const made = await c.create(d, 'made', O_WRONLY | O_CREAT, 0o644).catch(() => null);
  if (made !== null) {
    await c.release(made.entry.nodeid, made.fh);
    await c.forget(made.entry.nodeid, 1);
  }
  const listed = await c.opendir(d).then(async (h) => c.readdir(d, h.fh, 0n).finally(() => c.release(d, h.fh, true))).catch(() => []);
  for (const e of listed) seen.add(`name:${Buffer.from(e.name).toString()}`);
  await c.forget(d, 1);
}

describe('host-side rename races under a running guest', () => {
  it('never let the guest read, list or write outside the share (--sandbox=none: the daemon alone)', async () => {
    const base = mkdtempSync('/tmp/kumo-fs-race-');
    const share = join(base, 'share');
    mkdirSync(join(share, 'd', 'sub'), { recursive: true });
    writeFileSync(join(share, 'd', 'secret'), INSIDE);
    writeFileSync(join(share, 'd', 'sub', 'secret'), INSIDE);
    mkdirSync(join(base, 'outside', 'sub'), { recursive: true });
    writeFileSync(join(base, 'outside', 'secret'), CANARY);
    writeFileSync(join(base, 'outside', 'sub', 'secret'), CANARY);
    writeFileSync(join(base, 'outside', 'outside-only'), CANARY);
    const c = await connectFs({ who: 'kumo', kumoArgs: ['--sandbox=none'] }, base, share, cleanups);
    await c.init();
    cleanups.push(startRacer(base));
    const seen = new Set<string>();
    // 4 s at least, and on a loaded host until the race showed both sides (at most 20 s).
    const t0 = Date.now();
    const raced = () => rounds >= 150 && seen.has(INSIDE) && [...seen].some((s) => /^E[A-Z]+$/.test(s));
    let rounds = 0;
    while (Date.now() - t0 < 4000 || (!raced() && Date.now() - t0 < 20_000)) {
      await guestRound(c, seen);
      rounds++;
    }
    cleanups.pop()!();
    expect(rounds).toBeGreaterThan(100);
    // The race was real: the guest met the directory, and also the moments it was gone or a symlink.
    expect(seen.has(INSIDE)).toBe(true);
    expect([...seen].some((s) => /^E[A-Z]+$/.test(s))).toBe(true);
    expect(seen.has(CANARY)).toBe(false);
    expect(seen.has('name:outside-only')).toBe(false);
    expect(readdirSync(join(base, 'outside')).sort()).toEqual(['outside-only', 'secret', 'sub']);
    expect(readFileSync(join(base, 'outside', 'secret'), 'utf8')).toBe(CANARY);
  }, 60_000);
});
