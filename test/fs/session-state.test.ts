// What the daemon holds for a guest, across a guest reboot and against lookup counts and nodeids no guest could have.
import { execSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, InitIn, MkdirIn, Op } from '../../protocol/fuse/index.js';
import { BufferIo } from '../../backends/virtiofsd/fuse-io.js';
import { errCode } from './daemons.js';
import { LocalShare } from './local-transport.js';

const shares: LocalShare[] = [];
afterEach(() => {
  for (const s of shares.splice(0)) s.close();
});
const fdCount = (): number => readdirSync('/proc/self/fd').length;

async function share(opts: ConstructorParameters<typeof LocalShare>[1] = {}): Promise<LocalShare> {
  const s = new LocalShare('kumo-fs-state-', opts);
  shares.push(s);
  await s.client.init();
  return s;
}

/** Sends one raw request (fuse_in_header.nodeid and the body as given) to the share's server; the reply's errno or null. */
function raw(s: LocalShare, opcode: number, nodeid: bigint, body: Uint8Array, replySize = 256): number | null {
  const req = Buffer.from(s.client.encode(opcode, 0, [body]));
  req.writeBigUInt64LE(nodeid, 16);
  const out = Buffer.alloc(replySize);
  const n = s.server.handle(new BufferIo([req], replySize > 0 ? [out] : []));
  return n >= 16 ? -out.readInt32LE(4) : null;
}

/** A fresh file system of `type` mounted on a new directory `name` of the share; null where mounting is not allowed. */
function mountIn(s: LocalShare, name: string, type: string): string | null {
  const dir = join(s.dir, name);
  mkdirSync(dir);
  try {
    execSync(`mount -t ${type} kumo-fs-state ${dir}`);
    return dir;
  } catch {
    return null; // a container without CAP_SYS_ADMIN
  }
}

function batchForget(items: [bigint, bigint][]): Buffer {
  const body = Buffer.alloc(8 + 16 * items.length);
  body.writeUInt32LE(items.length, 0);
  items.forEach(([id, n], k) => {
    body.writeBigUInt64LE(id, 8 + 16 * k);
    body.writeBigUInt64LE(n, 16 + 16 * k);
  });
  return body;
}

describe('virtiofsd session state', () => {
  it('an INIT without DESTROY (a guest rebooted without unmounting) drops what the previous kernel held', async () => {
    const s = await share();
    const base = fdCount();
    for (let k = 0; k < 10; k++) writeFileSync(join(s.dir, `f${k}`), 'x');
    const held = [];
    for (let k = 0; k < 10; k++) {
      const e = await s.client.lookup(FUSE_ROOT_ID, `f${k}`);
      held.push({ nodeid: e.nodeid, fh: (await s.client.open(e.nodeid, 0)).fh });
    }
    expect(fdCount() - base).toBe(20);
    await s.client.init();
    expect(s.fs.inodes.size).toBe(1); // the root
    expect(s.fs.handles.size).toBe(0);
    expect(fdCount() - base).toBe(0);
    expect(await errCode(s.client.getattr(held[0].nodeid))).toBe('EBADF');
    expect(await errCode(s.client.read(held[0].nodeid, held[0].fh, 0, 1))).toBe('EBADF');
    const again = await s.client.lookup(FUSE_ROOT_ID, 'f0');
    expect((await s.client.getattr(again.nodeid)).size).toBe(1);
  });

  it('a 7.x INIT refused for its minor drops the previous session too, as virtiofsd does; a garbled one (short, not 7.x) leaves it', async () => {
    const cases: [string, Uint8Array, boolean][] = [
      ['minor 20', InitIn.pack({ major: 7, minor: 20, maxReadahead: 0, flags: 0, flags2: 0 }).subarray(0, 16), true],
      ['4-byte body', new Uint8Array(4), false],
      ['8-byte 7.36 body', InitIn.pack({ major: 7, minor: 36, maxReadahead: 0, flags: 0, flags2: 0 }).subarray(0, 8), false],
      ['major 8', InitIn.pack({ major: 8, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 }).subarray(0, 16), false],
    ];
    for (const [what, body, drops] of cases) {
      const s = await share();
      const base = fdCount();
      writeFileSync(join(s.dir, 'f'), 'x');
      const e = await s.client.lookup(FUSE_ROOT_ID, 'f');
      await s.client.open(e.nodeid, 0);
      expect(fdCount() - base).toBe(2);
      raw(s, Op.INIT, 0n, body);
      expect(fdCount() - base, what).toBe(drops ? 0 : 2);
      expect(await errCode(s.client.getattr(e.nodeid)), what).toBe(drops ? 'EIO' : 'ok');
    }
  });

  it('INIT or DESTROY drops the lock fds the previous session\'s lock owners took on the share root', async () => {
    const s = await share({ posixLock: true, guestFdLimit: 1000 });
    const whole = { start: 0n, end: 0x7fff_ffff_ffff_ffffn, type: 0 /* F_RDLCK */, pid: 1 };
    const lockRoot = async (owners: number): Promise<void> => {
      const { fh } = await s.client.opendir(FUSE_ROOT_ID);
      for (let o = 1; o <= owners; o++) await s.client.setlk(FUSE_ROOT_ID, fh, BigInt(o), whole);
    };
    const base = fdCount();
    await lockRoot(50);
    expect(fdCount() - base).toBe(51); // the directory handle and one fd per lock owner
    await s.client.init(); // a guest rebooted without unmounting
    expect(fdCount() - base).toBe(0);
    expect(s.fs.guestFds.count).toBe(0);
    await lockRoot(50);
    await s.client.destroy();
    expect(fdCount() - base).toBe(0);
    expect(s.fs.guestFds.count).toBe(0);
  });

  it('FORGET and BATCH_FORGET take counts and nodeids up to 2^64 - 1 (a count beyond 2^53 forgot nothing, a nodeid there ended the batch)', async () => {
    const s = await share();
    const base = fdCount();
    const ids: number[] = [];
    for (const n of ['a', 'b', 'c']) {
      writeFileSync(join(s.dir, n), '');
      ids.push((await s.client.lookup(FUSE_ROOT_ID, n)).nodeid);
    }
    const max = (1n << 64n) - 1n;
    raw(s, Op.BATCH_FORGET, 0n, batchForget([[1n << 60n, 1n], [BigInt(ids[0]), 1n]]), 0);
    raw(s, Op.BATCH_FORGET, 0n, batchForget([[BigInt(ids[1]), max]]), 0);
    const count = Buffer.alloc(8);
    count.writeBigUInt64LE(max);
    raw(s, Op.FORGET, BigInt(ids[2]), count, 0);
    expect(ids.map((id) => s.fs.inodes.tryGet(id))).toEqual([undefined, undefined, undefined]);
    expect(fdCount() - base).toBe(0);
    raw(s, Op.BATCH_FORGET, 0n, batchForget([[1n, max]]), 0);
    expect(s.fs.inodes.tryGet(FUSE_ROOT_ID)).toBeDefined(); // the root is never forgotten
  });

  it('a request naming a nodeid of 2^53 or more is answered EBADF (it got no reply at all)', async () => {
    const s = await share();
    const name = Buffer.from('x\0');
    for (const nodeid of [9999n, 1n << 60n, (1n << 64n) - 1n]) {
      expect(raw(s, Op.MKDIR, nodeid, Buffer.concat([MkdirIn.pack({ mode: 0o755, umask: 0 }), name]))).toBe(9);
      expect(raw(s, Op.UNLINK, nodeid, name)).toBe(9);
      expect(raw(s, Op.OPENDIR, nodeid, Buffer.alloc(8))).toBe(9);
    }
  });

  it('--inode-file-handles: the fd on a submount closes once the guest forgets its last inode there', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip();
    const s = await share({ inodeFileHandles: 'prefer' });
    const mnt = mountIn(s, 'mnt', 'tmpfs');
    if (mnt === null) return ctx.skip();
    try {
      writeFileSync(join(mnt, 'f'), 'x');
      const base = fdCount();
      const m = await s.client.lookup(FUSE_ROOT_ID, 'mnt');
      const f = await s.client.lookup(m.nodeid, 'f');
      await s.client.batchForget([{ nodeid: f.nodeid, nlookup: 1 }, { nodeid: m.nodeid, nlookup: 1 }]);
      expect(fdCount() - base).toBe(0);
      execSync(`umount ${mnt}`); // EBUSY while the daemon held a directory fd on it
    } finally {
      execSync(`umount -l ${mnt} 2>/dev/null || true`);
    }
  });

  it('READDIR goes on from the directory stream, not a seek: rm -rf on a file system whose cookies are positions (ramfs) removes all', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip();
    const s = await share();
    const d = mountIn(s, 'd', 'ramfs');
    if (d === null) return ctx.skip();
    try {
      const node = (await s.client.lookup(FUSE_ROOT_ID, 'd')).nodeid;
      for (const plus of [false, true]) {
        for (let k = 0; k < 200; k++) writeFileSync(join(d, `file-${k}`), '');
        // As a guest's rm -rf: a batch of entries, each removed, then READDIR from the last cookie sent.
        const { fh } = await s.client.opendir(node);
        let off = 0n;
        let removed = 0;
        for (;;) {
          const names = plus
            ? (await s.client.readdirplus(node, fh, off, 1024)).map((e) => {
              off = e.dirent.off;
              return e.dirent.name;
            })
            : (await s.client.readdir(node, fh, off, 1024)).map((e) => {
              off = e.off;
              return e.name;
            });
          if (names.length === 0) break;
          for (const n of names.map((b) => Buffer.from(b).toString())) {
            if (n === '.' || n === '..') continue;
            await s.client.unlink(node, n);
            removed++;
          }
        }
        await s.client.release(node, fh, true);
        expect(removed).toBe(200);
        expect(readdirSync(d)).toEqual([]);
      }
    } finally {
      execSync(`umount -l ${d} 2>/dev/null || true`);
    }
  });
});
