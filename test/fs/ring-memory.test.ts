// A front-end may take the memory region its rings live in away for a while and give it back (REM_MEM_REG, then
// ADD_MEM_REG, as QEMU does when it lays memory out again). The device must be serving once it is back.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { FuseClient, FUSE_ROOT_ID, Init, LkIn, Op, ReadIn } from '../../protocol/fuse/index.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';

const BIN = fileURLToPath(new URL('../../bin/kumo-virtiofsd.js', import.meta.url));
const INIT = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.POSIX_LOCKS | Init.INIT_EXT;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

async function start(args: string[]): Promise<{ t: VirtioFsTransport; c: FuseClient; share: string }> {
  const dir = mkdtempSync('/tmp/kumo-fs-ringmem-');
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'f'), 'locked\n');
  writeFileSync(join(share, 'big'), Buffer.alloc(4 << 20, 7));
  const sock = join(dir, 's.sock');
  const child = spawn(process.execPath, [BIN, `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=chroot', ...args],
    { stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'error' } });
  let t: VirtioFsTransport | null = null;
  cleanups.push(() => {
    t?.close();
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  t = await VirtioFsTransport.connect(sock, 15_000, 256, 8);
  const c = new FuseClient(t);
  await c.init(INIT);
  return { t, c, share };
}

/** Raw requests on the request queue, their replies read straight from guest memory. */
class Raw {
  constructor(private readonly t: VirtioFsTransport) {}
  submit(req: Uint8Array, replyLen: number, token: number): number {
    const dev = this.t.dev;
    const reqAt = dev.buffer(Math.max(req.length, 64), 4096);
    dev.mem!.write(reqAt, req);
    const rep = dev.buffer(replyLen, 4096);
    const q = dev.queues[1];
    if (q.dq.add([{ addr: reqAt, len: req.length }], [{ addr: rep, len: replyLen }], token) === null) throw new Error('queue full');
    q.kick();
    return rep;
  }
  /** The tokens used within ms. */
  async used(ms: number): Promise<number[]> {
    const q = this.t.dev.queues[1];
    const out: number[] = [];
    const until = Date.now() + ms;
    while (Date.now() < until && out.length === 0) {
      q.dq.drainUsed((token) => out.push(token));
      if (out.length === 0) await sleep(10);
    }
    return out;
  }
  error(rep: number): number {
    const b = this.t.dev.mem!.slice(rep, 16);
    return new DataView(b.buffer, b.byteOffset, 16).getInt32(4, true);
  }
  /** Takes the rings' region away for `gapMs` (running `during` meanwhile) and gives it back. */
  async memoryGap(gapMs: number, during: () => Promise<void> = async () => {}): Promise<void> {
    const reg = this.t.dev.mem!.regions[0];
    const region = { guestAddr: reg.guestAddr, size: reg.size, userAddr: reg.userAddr, mmapOffset: reg.fdOffset };
    this.t.dev.frontend.removeMemRegion(region);
    await during();
    await sleep(gapMs);
    this.t.dev.frontend.addMemRegion(region, reg.fd);
  }
}

describe('virtiofsd when the front-end takes ring memory away and gives it back', () => {
  it('serves on after a busy stretch (work left over woke the queue thread into the missing rings: rings stopped for good)', async () => {
    const { t, c } = await start(['--thread-pool-size=1']);
    const big = await c.lookup(FUSE_ROOT_ID, 'big');
    const { fh } = await c.open(big.nodeid, 0);
    const raw = new Raw(t);
    for (let k = 0; k < 8; k++) {
      raw.submit(c.encode(Op.READ, big.nodeid, [ReadIn.pack({ fh, offset: (k % 4) << 20, size: 1 << 20, readFlags: 0, lockOwner: 0n, flags: 0 })], BigInt(1000 + k)), (1 << 20) + 16, 10 + k);
    }
    await raw.memoryGap(100);
    await sleep(300);
    const rep = raw.submit(c.encode(Op.ACCESS, FUSE_ROOT_ID, [new Uint8Array(8)], 2000n), 16, 99);
    const seen: number[] = [];
    for (let k = 0; k < 20 && !seen.includes(99); k++) seen.push(...(await raw.used(500)));
    expect(seen).toContain(99);
    expect(raw.error(rep)).toBe(0);
  }, 30_000);

  it('a blocking lock whose holder goes away during the gap is taken only once its answer can be delivered', async (ctx) => {
    if (!existsSync('/usr/bin/python3')) return ctx.skip(); // the host lock holder (Node has no fcntl locks)
    const { t, c, share } = await start(['--posix-lock']);
    const e = await c.lookup(FUSE_ROOT_ID, 'f');
    const { fh } = await c.open(e.nodeid, 2);
    const path = join(share, 'f');
    const holder: ChildProcess = spawn('/usr/bin/python3', ['-c', `import fcntl, time\nf = open(${JSON.stringify(path)}, 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)`], { stdio: ['ignore', 'pipe', 'ignore'] });
    cleanups.push(() => holder.kill('SIGKILL'));
    await new Promise((r) => holder.stdout!.once('data', r));
    const raw = new Raw(t);
    const rep = raw.submit(c.encode(Op.SETLKW, e.nodeid, [LkIn.pack({ fh, owner: 7n, lk: { start: 0n, end: 0x7fffffffffffffffn, type: 1, pid: 1 }, lkFlags: 0 })], 3000n), 16, 42);
    expect(await raw.used(300)).toEqual([]); // waiting
    await raw.memoryGap(300, async () => {
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
    });
    t.dev.queues[1].kick();
    // It was taken during the gap, its answer could not be written, and it was dropped: never answered, still held.
    expect(await raw.used(3000)).toEqual([42]);
    expect(raw.error(rep)).toBe(0);
    const canLock = spawnSync('/usr/bin/python3', ['-c', `import fcntl\nf = open(${JSON.stringify(path)}, 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)`]).status === 0;
    expect(canLock).toBe(false); // held for the guest, which knows it
  }, 30_000);
});

describe('virtiofsd and a request whose reply buffer is not guest memory', () => {
  // The driver's reply header (zeroed by Linux) left as it was reads as error 0, len 0: a success with no data.
  it('answers EIO in the reply header where that header is guest memory', async () => {
    const { t, c } = await start([]);
    const dev = t.dev;
    const mem = dev.mem!;
    const q = dev.queues[1];
    const req = c.encode(Op.GETATTR, FUSE_ROOT_ID, [new Uint8Array(16)], 4242n);
    const reqAt = dev.buffer(4096, 4096);
    mem.write(reqAt, req);
    const hdr = dev.buffer(16, 16);
    const attr = dev.buffer(104, 8);
    mem.fill(hdr, 16, 0);
    const head = q.dq.add([{ addr: reqAt, len: req.length }], [{ addr: hdr, len: 16 }, { addr: attr, len: 104 }], 7);
    expect(head).not.toBe(null);
    // The attr buffer's descriptor (third of the chain, in an indirect table or not) moves far past guest memory.
    const desc = q.dq.layout.descAddr + (head as number) * 16;
    const third = mem.readU16(desc + 12) & 4 /* INDIRECT */
      ? mem.readU32(desc) + 2 * 16
      : q.dq.layout.descAddr + mem.readU16(q.dq.layout.descAddr + mem.readU16(desc + 14) * 16 + 14) * 16;
    mem.writeU32(third + 4, 0x7fff);
    q.kick();
    const got: { token: number; len: number }[] = [];
    for (let k = 0; k < 300 && got.length === 0; k++) {
      q.dq.drainUsed((token, len) => got.push({ token, len }));
      if (got.length === 0) await sleep(10);
    }
    mem.writeU32(third + 4, 0);
    const h = mem.slice(hdr, 16);
    const dv = new DataView(h.buffer, h.byteOffset, 16);
    expect(got).toEqual([{ token: 7, len: 16 }]);
    expect({ len: dv.getUint32(0, true), error: dv.getInt32(4, true), unique: dv.getBigUint64(8, true) }).toEqual({ len: 16, error: -5, unique: 4242n });
    // Still serving.
    expect((await c.lookup(FUSE_ROOT_ID, 'f')).nodeid).toBeGreaterThan(0);
  });
});
