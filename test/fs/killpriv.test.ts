import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Fattr, FuseClient, FUSE_OPEN_KILL_SUIDGID, FUSE_ROOT_ID, FUSE_WRITE_KILL_SUIDGID, Init } from '../../protocol/fuse/index.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { connectFs, QEMU_VIRTIOFSD, type FsDaemon } from './daemons.js';

const INIT = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.ATOMIC_O_TRUNC | Init.HANDLE_KILLPRIV_V2 | Init.INIT_EXT;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const root = process.getuid?.() === 0;
if (!root) console.log('killpriv tests skipped: set-user-ID files owned by another user and a daemon with CAP_FSETID need root');

/**
 * One case per file: its mode before, and what the guest sends. `kill` marks the request the way a guest kernel
 * does for a caller without CAP_FSETID once FUSE_HANDLE_KILLPRIV_V2 is negotiated.
 */
const CASES: { name: string; mode: number; run: (c: FuseClient, node: number, kill: boolean) => Promise<unknown>; notOnQemu?: boolean }[] = [
  { name: 'write', mode: 0o6755, run: (c, n, k) => withFile(c, n, O_RDWR, 0, (fh) => c.write(n, fh, 0, Buffer.from('x'), k ? FUSE_WRITE_KILL_SUIDGID : 0)) },
  { name: 'truncate', mode: 0o6755, run: (c, n, k) => c.setattr(n, { valid: Fattr.SIZE | (k ? Fattr.KILL_SUIDGID : 0), size: 1 }) },
  { name: 'open-trunc', mode: 0o4755, run: (c, n, k) => withFile(c, n, O_RDWR | O_TRUNC, k ? FUSE_OPEN_KILL_SUIDGID : 0, async () => undefined) },
  { name: 'create-trunc', mode: 0o6755, run: (c, n, k) => c.create(FUSE_ROOT_ID, `f-create-trunc`, O_RDWR | O_CREAT | O_TRUNC, 0o100644, 0, k ? FUSE_OPEN_KILL_SUIDGID : 0).then((r) => c.release(n, r.fh)),
    // QEMU's virtiofsd 7.2 aborts here (glibc: "invalid openat64 call: O_CREAT or O_TMPFILE without mode").
    notOnQemu: true },
  { name: 'sgid-no-group-exec', mode: 0o2644, run: (c, n, k) => withFile(c, n, O_RDWR, 0, (fh) => c.write(n, fh, 0, Buffer.from('x'), k ? FUSE_WRITE_KILL_SUIDGID : 0)) },
  { name: 'chown', mode: 0o6755, run: (c, n, k) => c.setattr(n, { valid: Fattr.UID | Fattr.GID | (k ? Fattr.KILL_SUIDGID : 0), uid: 1001, gid: 1001 }) },
  // The host's chown clears set-user-ID, and set-group-ID with group execute, by itself; set-group-ID without it
  // only for a caller outside the file's group and without CAP_FSETID, which the daemon is not.
  { name: 'chgrp-sgid-no-group-exec', mode: 0o2664, run: (c, n, k) => c.setattr(n, { valid: Fattr.GID | (k ? Fattr.KILL_SUIDGID : 0), gid: 1001 }) },
];

async function withFile<T>(c: FuseClient, node: number, flags: number, openFlags: number, f: (fh: number) => Promise<T>): Promise<T> {
  const { fh } = await c.open(node, flags, openFlags);
  try {
    return await f(fh);
  } finally {
    await c.release(node, fh);
  }
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** Runs every case twice (flagged and not) against a daemon; returns "case: mode before -> after" lines and INIT's answer. */
async function run(daemon: FsDaemon): Promise<{ granted: boolean; lines: string[] }> {
  const cases = CASES.filter((c) => !(daemon.who === 'qemu' && c.notOnQemu));
  const dir = mkdtempSync('/tmp/kumo-fs-killpriv-');
  const share = join(dir, 'share');
  mkdirSync(share);
  const files: string[] = [];
  for (const c of cases) {
    for (const kill of [true, false]) {
      const name = `f-${c.name}${kill ? '' : '-privileged'}`;
      const p = join(share, c.name === 'create-trunc' ? 'f-create-trunc' : name);
      if (c.name === 'create-trunc' && !kill) continue; // one name only: CREATE picks it
      writeFileSync(p, 'contents');
      chownSync(p, 1000, 1000);
      chmodSync(p, c.mode);
      files.push(p);
    }
  }
  const c = await connectFs(daemon, dir, share, cleanups);
  const r = await c.init(INIT);
  const lines: string[] = [];
  for (const k of cases) {
    for (const kill of [true, false]) {
      if (k.name === 'create-trunc' && !kill) continue;
      const name = k.name === 'create-trunc' ? 'f-create-trunc' : `f-${k.name}${kill ? '' : '-privileged'}`;
      const e = await c.lookup(FUSE_ROOT_ID, name);
      await k.run(c, e.nodeid, kill);
      const after = statSync(join(share, name)).mode & 0o7777;
      lines.push(`${k.name}${kill ? ' (unprivileged caller)' : ''}: ${k.mode.toString(8)} -> ${after.toString(8)}`);
    }
  }
  return { granted: (BigInt(r.flags) & Init.HANDLE_KILLPRIV_V2) !== 0n, lines };
}

describe.skipIf(!root)('--killpriv-v2: the daemon clears set-user-ID bits for unprivileged guest callers', () => {
  it('parses both spellings', () => {
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--killpriv-v2']).fs.killPrivV2).toBe(true);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'killpriv_v2']).fs.killPrivV2).toBe(true);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'killpriv_v2,no_killpriv_v2']).fs.killPrivV2).toBe(false);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d']).fs.killPrivV2).toBe(false);
  });

  it.skipIf(!existsSync(QEMU_VIRTIOFSD))('leaves every file with the mode QEMU virtiofsd -o killpriv_v2 leaves', async () => {
    const k = await run({ who: 'kumo', kumoArgs: ['--killpriv-v2'] });
    const q = await run({ who: 'qemu', qemuOptions: ['killpriv_v2'] });
    console.log(`killpriv_v2 (kumo = QEMU):\n  ${k.lines.join('\n  ')}`);
    expect(k.granted).toBe(true);
    expect(q.granted).toBe(true);
    expect(k.lines.filter((l) => !l.startsWith('create-trunc'))).toEqual(q.lines);
    expect(k.lines).toContain('create-trunc (unprivileged caller): 6755 -> 755');
    // The flagged requests clear the bits; the same requests from a privileged caller keep them.
    expect(k.lines).toContain('write (unprivileged caller): 6755 -> 755');
    expect(k.lines).toContain('write: 6755 -> 6755');
    expect(k.lines).toContain('truncate (unprivileged caller): 6755 -> 755');
    expect(k.lines).toContain('truncate: 6755 -> 6755');
    expect(k.lines).toContain('open-trunc (unprivileged caller): 4755 -> 755');
    expect(k.lines).toContain('open-trunc: 4755 -> 4755');
    expect(k.lines).toContain('chgrp-sgid-no-group-exec (unprivileged caller): 2664 -> 2664');
  }, 60_000);
  if (!existsSync(QEMU_VIRTIOFSD)) console.log(`killpriv comparison skipped: ${QEMU_VIRTIOFSD} is not installed`);

  it('is off by default: not granted, and OPEN and SETATTR flags of a guest that sends them anyway change nothing', async () => {
    const k = await run({ who: 'kumo' });
    expect(k.granted).toBe(false);
    expect(k.lines).toContain('truncate (unprivileged caller): 6755 -> 6755');
    expect(k.lines).toContain('open-trunc (unprivileged caller): 4755 -> 4755');
    // WRITE's flag predates killpriv_v2: a guest sets it on direct writes (cache=never) and clears nothing itself.
    expect(k.lines).toContain('write (unprivileged caller): 6755 -> 755');
    expect(k.lines).toContain('write: 6755 -> 6755');
    if (!existsSync(QEMU_VIRTIOFSD)) return;
    const q = await run({ who: 'qemu' });
    const writes = (lines: string[]): string[] => lines.filter((l) => l.startsWith('write'));
    expect(writes(k.lines)).toEqual(writes(q.lines));
  }, 60_000);
});
