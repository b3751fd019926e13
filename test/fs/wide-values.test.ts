/**
 * 64-bit values that a JS number cannot hold: file times past 2^53 s (tmpfs keeps any i64 second), statfs counts
 * of 2^64-1 (hugetlbfs without an inode limit), a split READ at an odd offset just below 2^53, and the kumo-vu
 * client's side of the same values. Each is answered whole, as QEMU's virtiofsd does.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Fattr, FUSE_ROOT_ID, Init, Op, ReadIn, SetattrIn, GetattrIn, ReaddirIn, OpenIn, type SetattrIn as SetattrInT } from '../../protocol/fuse/index.js';
import { IoOffload } from '../../backends/virtiofsd/io-offload.js';
import { ScriptRunner } from '../../vmm/kumo-vu/fs/script.js';
import { connectFs, QEMU_VIRTIOFSD } from './daemons.js';
import { LocalShare } from './local-transport.js';

const cleanups: (() => void)[] = [];
const shares: LocalShare[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
  for (const s of shares.splice(0)) s.close();
});

// File times: SETATTR reply, GETATTR and READDIRPLUS entries all carry the stored 64-bit second.
/** fuse_attr_out: attr_valid(8) nsec(4) dummy(4), then fuse_attr: ino size blocks atime mtime ... */
const MTIME_IN_ATTR_OUT = 16 + 32;
/** fuse_direntplus: fuse_entry_out (40 + fuse_attr) then fuse_dirent. */
const MTIME_IN_ENTRY_OUT = 40 + 32;

interface Seen { hostMtime: string; setattrReply: bigint; getattrReply: bigint; readdirplus: bigint }

async function setMtime(who: 'kumo' | 'qemu', t: bigint): Promise<Seen> {
  const dir = mkdtempSync('/dev/shm/kumo-wide-times-');
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'f'), 'x');
  const c = await connectFs({ who }, dir, share, cleanups, 1);
  await c.init(Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT | Init.DO_READDIRPLUS);
  const e = await c.lookup(FUSE_ROOT_ID, 'f');
  const sa: SetattrInT = { valid: Fattr.MTIME, fh: 0, size: 0, lockOwner: 0n, atime: 0, mtime: t, ctime: 0, atimensec: 0, mtimensec: 0, ctimensec: 0, mode: 0, uid: 0, gid: 0 };
  const r = Buffer.from(await c.call(Op.SETATTR, e.nodeid, [SetattrIn.pack(sa)], 104, 'SETATTR'));
  const hostMtime = spawnSync('stat', ['-c', '%Y', join(share, 'f')], { encoding: 'utf8' }).stdout.trim();
  const g = Buffer.from(await c.call(Op.GETATTR, e.nodeid, [GetattrIn.pack({ getattrFlags: 0, fh: 0 })], 104, 'GETATTR'));
  const d = await c.call(Op.OPENDIR, FUSE_ROOT_ID, [OpenIn.pack({ flags: 0, openFlags: 0 })], 16, 'OPENDIR');
  const dfh = Buffer.from(d).readUInt32LE(0);
  const rd = Buffer.from(await c.call(Op.READDIRPLUS, FUSE_ROOT_ID, [ReaddirIn.pack({ fh: dfh, offset: 0n, size: 4096, readFlags: 0, lockOwner: 0n, flags: 0 })], 4096, 'READDIRPLUS'));
  // Find the entry named "f".
  let plus = 0n;
  for (let o = 0; o + 128 + 24 <= rd.length;) {
    const namelen = rd.readUInt32LE(o + 128 + 16);
    const name = rd.subarray(o + 128 + 24, o + 128 + 24 + namelen).toString();
    if (name === 'f') plus = rd.readBigInt64LE(o + MTIME_IN_ENTRY_OUT);
    o += 128 + ((24 + namelen + 7) & ~7);
  }
  return { hostMtime, setattrReply: r.readBigInt64LE(MTIME_IN_ATTR_OUT), getattrReply: g.readBigInt64LE(MTIME_IN_ATTR_OUT), readdirplus: plus };
}

for (const t of [2n ** 63n - 1n, 2n ** 53n + 1n]) {
  describe(`SETATTR mtime=${t} on tmpfs`, () => {
    it.skipIf(!existsSync(QEMU_VIRTIOFSD))('QEMU virtiofsd answers the stored time everywhere', async () => {
      const s = await setMtime('qemu', t);
      expect(s).toEqual({ hostMtime: String(t), setattrReply: t, getattrReply: t, readdirplus: t });
    });
    it('kumo-virtiofsd answers the stored time everywhere', async () => {
      const s = await setMtime('kumo', t);
      expect(s).toEqual({ hostMtime: String(t), setattrReply: t, getattrReply: t, readdirplus: t });
    });
  });
}

// hugetlbfs reports no inode limit as f_files = f_ffree = 2^64-1. Mounting it needs root (CI runs as root).
const mnt = mkdtempSync('/tmp/kumo-wide-huge-');
const mounted = spawnSync('mount', ['-t', 'hugetlbfs', '-o', 'size=4M', 'none', mnt]).status === 0;
if (!mounted) console.log(`wide-values: STATFS cases skipped: cannot mount hugetlbfs on ${mnt} (needs root)`);
afterAll(() => {
  // The daemons were just SIGKILLed and may still hold the mount: detach it lazily.
  if (mounted) spawnSync('umount', ['-l', mnt]);
  rmSync(mnt, { recursive: true, force: true });
});

interface Counts { blocks: bigint; bfree: bigint; bavail: bigint; files: bigint; ffree: bigint }

function host(dir: string): Counts {
  // statvfs(3) fields as unsigned (GNU stat prints f_ffree signed).
  const py = 'import os,sys\ns=os.statvfs(sys.argv[1])\nm=(1<<64)-1\nprint(*(x & m for x in (s.f_blocks,s.f_bfree,s.f_bavail,s.f_files,s.f_ffree)))';
  const [blocks, bfree, bavail, files, ffree] = spawnSync('python3', ['-c', py, dir], { encoding: 'utf8' }).stdout.trim().split(' ').map(BigInt);
  return { blocks, bfree, bavail, files, ffree };
}

async function statfs(who: 'kumo' | 'qemu'): Promise<Counts> {
  const dir = mkdtempSync('/tmp/kumo-wide-statfs-');
  const share = join(mnt, who);
  mkdirSync(share, { recursive: true });
  const c = await connectFs({ who }, dir, share, cleanups, 1);
  await c.init(Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT);
  // Raw: the client's Kstatfs decoder refuses u64 values >= 2^53.
  const r = Buffer.from(await c.call(Op.STATFS, FUSE_ROOT_ID, [], 80, 'STATFS'));
  const u = (o: number): bigint => r.readBigUInt64LE(o);
  return { blocks: u(0), bfree: u(8), bavail: u(16), files: u(24), ffree: u(32) };
}

describe('STATFS of a share whose file system reports u64 counts >= 2^63 (hugetlbfs: no inode limit)', () => {
  it.skipIf(!mounted)('the host reports f_files = f_ffree = 2^64-1', () => {
    const h = host(mnt);
    expect({ files: h.files, ffree: h.ffree }).toEqual({ files: 2n ** 64n - 1n, ffree: 2n ** 64n - 1n });
  });
  it.skipIf(!mounted || !existsSync(QEMU_VIRTIOFSD))('QEMU virtiofsd passes them whole', async () => {
    expect(await statfs('qemu')).toEqual(host(mnt));
  });
  it.skipIf(!mounted)('kumo-virtiofsd passes them whole', async () => {
    expect(await statfs('kumo')).toEqual(host(mnt));
  });
});

const KiB = 1024;
const TWO53 = 2 ** 53;
/** Where the host data starts: 512 KiB below 2^53 (exact). */
const BASE = TWO53 - 512 * KiB;
const DATA = randomBytes(1024 * KiB);
/** An odd offset below 2^53 (a safe integer, exact on the wire); size large enough to be split. */
const OFFSET = TWO53 - 1;
const SIZE = 512 * KiB;

function makeShare(): { dir: string; share: string } {
  const dir = mkdtempSync('/dev/shm/kumo-wide-split-');
  const share = join(dir, 'share');
  mkdirSync(share);
  const f = join(share, 'big');
  // Sparse file of 2^53 + 1 MiB on tmpfs, the random data at [BASE, BASE + 1 MiB).
  const py = `import os,sys\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT,0o644)\nos.ftruncate(fd,${TWO53}+(1<<20))\n` +
    `d=sys.stdin.buffer.read()\nassert os.pwrite(fd,d,${BASE})==len(d)\nos.close(fd)\n`;
  const r = spawnSync('python3', ['-c', py, f], { input: DATA });
  if (r.status !== 0) throw new Error(`python3 failed: ${r.stderr}`);
  return { dir, share };
}

async function readAt(who: 'kumo' | 'qemu'): Promise<Buffer> {
  const { dir, share } = makeShare();
  const c = await connectFs({ who }, dir, share, cleanups, 1);
  await c.init(Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT);
  const e = await c.lookup(FUSE_ROOT_ID, 'big');
  const { fh } = await c.open(e.nodeid, 0);
  // Exact on the wire: OFFSET is a safe integer.
  const arg = ReadIn.pack({ fh, offset: BigInt(OFFSET), size: SIZE, readFlags: 0, lockOwner: 0n, flags: 0 });
  return Buffer.from(await c.call(Op.READ, e.nodeid, [arg], SIZE, 'READ'));
}

const want = DATA.subarray(OFFSET - BASE, OFFSET - BASE + SIZE);

describe('READ at an odd offset just below 2^53 (split READ)', () => {
  it.skipIf(!existsSync(QEMU_VIRTIOFSD))('QEMU virtiofsd returns the file bytes', async () => {
    const got = await readAt('qemu');
    expect(got.length).toBe(SIZE);
    expect(got.equals(want)).toBe(true);
  });

  it('kumo-virtiofsd returns the file bytes', async () => {
    const got = await readAt('kumo');
    expect(got.length).toBe(SIZE);
    const half = SIZE / 2;
    // Diagnose where it goes wrong before the whole-buffer check.
    expect(got.subarray(0, half).equals(want.subarray(0, half))).toBe(true);
    const shifted = got.subarray(half).equals(DATA.subarray(OFFSET - BASE + half + 1, OFFSET - BASE + SIZE + 1));
    expect({ secondHalfShiftedByOne: shifted }).toEqual({ secondHalfShiftedByOne: false });
    expect(got.equals(want)).toBe(true);
  });
});

describe('IoOffload: no split READ whose second half would start past 2^53', () => {
  const offload = IoOffload.create(8, 0);
  it.skipIf(offload === null)('wantsSplit refuses it', () => {
    const o = offload as IoOffload;
    try {
      expect(o.wantsSplit(SIZE, 0)).toBe(true);
      // offset + half is past 2^53: a number sum would round, so that READ is not split.
      expect(o.wantsSplit(SIZE, OFFSET)).toBe(false);
      expect(o.wantsSplit(SIZE, BASE - SIZE)).toBe(true);
    } finally {
      o.close();
    }
  });
});

describe('kumo-vu fs / FuseClient: a file time of 2^53 + 2 seconds', () => {
  it('stat and getattr answer', async () => {
    const s = new LocalShare('../dev/shm/kumo-wide-times-');
    shares.push(s);
    const f = join(s.dir, 'f');
    writeFileSync(f, 'x');
    // The share is on tmpfs (/dev/shm), which keeps 64-bit seconds (ext4 clamps at 2446).
    const r = spawnSync('python3', ['-c', `import ctypes,sys\nl=ctypes.CDLL(None)\nclass T(ctypes.Structure): _fields_=[('s',ctypes.c_int64),('n',ctypes.c_long)]\nt=(T*2)(T(0,0),T(${2 ** 53 + 2},0))\nsys.exit(l.utimensat(-100,sys.argv[1].encode(),t,0))`, f]);
    const stored = spawnSync('stat', ['-c', '%Y', f], { encoding: 'utf8' }).stdout.trim();
    await s.client.init(Init.ASYNC_READ | Init.INIT_EXT);
    const e = await s.client.lookup(FUSE_ROOT_ID, 'f').then((x) => x, (err: Error) => err);
    const out = await new ScriptRunner(s.client).runLine('stat f').then((x) => x, (err: Error) => `THROW ${err.message}`);
    expect({ utimensat: r.status, stored, lookup: e instanceof Error ? `THROW ${e.message}` : 'ok', out: out.startsWith('THROW') ? out : 'ok' })
      .toEqual({ utimensat: 0, stored: String(2 ** 53 + 2), lookup: 'ok', out: 'ok' });
  });
});

describe('kumo-vu fs script: lock ranges beyond 64 bits', () => {
  const runner = async (): Promise<ScriptRunner> => {
    const s = new LocalShare('kumo-wide-script-', { posixLock: true });
    shares.push(s);
    writeFileSync(join(s.dir, 'f'), 'data');
    await s.client.init(Init.ASYNC_READ | Init.POSIX_LOCKS | Init.INIT_EXT);
    return new ScriptRunner(s.client);
  };

  it('seek refuses an offset of 2^64', async () => {
    await expect((await runner()).runLine('seek f 0 18446744073709551616')).rejects.toThrow(/64-bit/);
  });

  it('lock refuses an end of 2^64 instead of locking [0, 0]', async () => {
    await expect((await runner()).runLine('lock f wr 0 18446744073709551616')).rejects.toThrow(/64-bit unsigned/);
  });
});
