import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FuseClient, FuseReplyError, FUSE_LK_FLOCK, FUSE_RELEASE_FLOCK_UNLOCK, FUSE_ROOT_ID, Init, type FileLock } from '../../protocol/fuse/index.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { closesCycle, conflicts, parseFdinfoLocks } from '../../backends/virtiofsd/lock-deadlock.js';
import { connectFs, errCode, QEMU_VIRTIOFSD } from './daemons.js';
import type { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';
import { LockWaits } from '../../backends/virtiofsd/lock-waits.js';

const INIT = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.PARALLEL_DIROPS | Init.ATOMIC_O_TRUNC | Init.POSIX_LOCKS | Init.FLOCK_LOCKS | Init.INIT_EXT;
const O_RDWR = 2;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
const whole = (type: number): FileLock => ({ start: 0n, end: 0x7fffffffffffffffn, type, pid: 1 });
const range = (start: bigint, len: number, type = F_WRLCK): FileLock => ({ start, end: start + BigInt(len) - 1n, type, pid: 1 });
/** A write lock through a handle opened read-only. */
const s2lock = (c: FuseClient, node: number, fh: number): Promise<void> => c.setlk(node, fh, 2n, whole(F_WRLCK));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether a host process can take flock(LOCK_EX|LOCK_NB) on the file right now. */
const hostCanFlock = (path: string): boolean => spawnSync('flock', ['-n', '-x', path, 'true']).status === 0;

interface Session {
  c: FuseClient;
  granted: bigint;
  share: string;
  /** The file `f` in the share, opened twice (two guest open files): nodeid and handles. */
  node: number;
  fh: [number, number];
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

async function open(who: 'kumo' | 'qemu', args: string[], env: Record<string, string> = {}): Promise<Session> {
  const dir = mkdtempSync('/tmp/kumo-fs-locks-');
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'f'), 'locked file\n');
  const c = await connectFs({ who, kumoArgs: args, qemuOptions: args, env }, dir, share, cleanups, 8);
  const r = await c.init(INIT);
  const granted = BigInt(r.flags) | (BigInt(r.flags2) << 32n);
  const e = await c.lookup(FUSE_ROOT_ID, 'f');
  const a = await c.open(e.nodeid, O_RDWR);
  const b = await c.open(e.nodeid, O_RDWR);
  return { c, granted, share, node: e.nodeid, fh: [a.fh, b.fh] };
}

/** flock(2) as the guest kernel sends it: SETLK(W) with FUSE_LK_FLOCK on the open file's handle. */
const flock = (s: Session, k: 0 | 1, type: number, wait = false): Promise<void> =>
  s.c.setlk(s.node, s.fh[k], BigInt(100 + k), whole(type), wait, FUSE_LK_FLOCK);

/** Two guest open files contend without waiting; the host sees the locks. Same sequence on either daemon. */
async function flockSequence(s: Session): Promise<string[]> {
  const path = join(s.share, 'f');
  const out: string[] = [];
  const step = async (what: string, p: Promise<void>): Promise<void> => {
    out.push(`${what}=${await errCode(p)} host=${hostCanFlock(path) ? 'free' : 'held'}`);
  };
  await step('ex0', flock(s, 0, F_WRLCK));
  await step('ex1', flock(s, 1, F_WRLCK));
  await step('sh1', flock(s, 1, F_RDLCK));
  await step('un0', flock(s, 0, F_UNLCK));
  await step('sh1', flock(s, 1, F_RDLCK));
  await step('sh0', flock(s, 0, F_RDLCK));
  await step('ex0', flock(s, 0, F_WRLCK));
  await step('rel1', s.c.release(s.node, s.fh[1], false, FUSE_RELEASE_FLOCK_UNLOCK));
  await step('ex0', flock(s, 0, F_WRLCK));
  await step('rel0', s.c.release(s.node, s.fh[0], false, FUSE_RELEASE_FLOCK_UNLOCK));
  return out;
}

describe('-o flock: flock(2) from the guest locks the host file', () => {
  it('is off unless asked for: FUSE_FLOCK_LOCKS is not granted and a flock request is ENOSYS', async () => {
    const s = await open('kumo', []);
    expect(s.granted & Init.FLOCK_LOCKS).toBe(0n);
    expect(await errCode(flock(s, 0, F_WRLCK))).toBe('ENOSYS');
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'flock']).fs.flock).toBe(true);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'flock,no_flock']).fs.flock).toBe(false);
  }, 30_000);

  it.skipIf(!existsSync(QEMU_VIRTIOFSD))('grants, refuses and releases locks as QEMU virtiofsd -o flock does, and the host sees them', async () => {
    const k = await open('kumo', ['-o', 'flock']);
    expect(k.granted & Init.FLOCK_LOCKS).toBe(Init.FLOCK_LOCKS);
    const kumo = await flockSequence(k);
    const q = await open('qemu', ['flock']);
    const qemu = await flockSequence(q);
    console.log(`flock sequence (kumo = QEMU): ${kumo.join(', ')}`);
    expect(kumo).toEqual(qemu);
    expect(kumo).toEqual([
      'ex0=ok host=held', 'ex1=EWOULDBLOCK host=held', 'sh1=EWOULDBLOCK host=held', 'un0=ok host=free', 'sh1=ok host=held',
      // A failed LOCK_EX|LOCK_NB upgrade drops the shared lock first (flock(2): conversion is not atomic).
      'sh0=ok host=held', 'ex0=EWOULDBLOCK host=held', 'rel1=ok host=free', 'ex0=ok host=held', 'rel0=ok host=free',
    ]);
  }, 60_000);
  if (!existsSync(QEMU_VIRTIOFSD)) console.log(`flock comparison skipped: ${QEMU_VIRTIOFSD} is not installed`);

  it('waits for a lock another guest file holds without holding up other requests, and gets it on release', async () => {
    // The timer's retries are 10 s apart here: the release itself must hand the lock over.
    const s = await open('kumo', ['-o', 'flock'], { KUMO_FS_LOCK_RETRY_MS: '10000' });
    await flock(s, 0, F_WRLCK);
    let settled = '';
    const waiting = flock(s, 1, F_WRLCK, true).then(() => (settled = 'ok'), (e: FuseReplyError) => (settled = e.code));
    // Served while the SETLKW waits: the request loop is not blocked on it.
    const attr = await s.c.getattr(s.node);
    expect(attr.size).toBe(12);
    expect(settled).toBe('');
    const t0 = Date.now();
    await flock(s, 0, F_UNLCK);
    await waiting;
    expect(settled).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(hostCanFlock(join(s.share, 'f'))).toBe(false);
  }, 30_000);

  it('waits for a lock a host process holds, retrying until it is free', async () => {
    const s = await open('kumo', ['-o', 'flock']);
    const path = join(s.share, 'f');
    const holder = spawn('flock', ['-x', path, 'sleep', '0.6'], { stdio: 'ignore' });
    cleanups.push(() => holder.kill('SIGKILL'));
    for (let i = 0; i < 100 && hostCanFlock(path); i++) await sleep(10);
    expect(hostCanFlock(path)).toBe(false);
    const t0 = Date.now();
    await flock(s, 0, F_WRLCK, true);
    const waited = Date.now() - t0;
    console.log(`SETLKW behind a host flock held ~0.6 s: answered after ${waited} ms`);
    expect(waited).toBeGreaterThan(200);
    expect(holder.exitCode ?? (await new Promise((r) => holder.once('exit', r)))).toBe(0);
  }, 30_000);

  it('answers EINTR to a waiting lock the front-end interrupts', async () => {
    const s = await open('kumo', ['-o', 'flock']);
    await flock(s, 0, F_WRLCK);
    const unique = s.c.nextUnique;
    const waiting = errCode(flock(s, 1, F_WRLCK, true));
    await s.c.getattr(s.node); // the SETLKW is parked once this is answered (same queue, in order)
    await s.c.interrupt(unique);
    expect(await waiting).toBe('EINTR');
    // The interrupted request took nothing: the first file still holds the lock.
    expect(await errCode(flock(s, 1, F_WRLCK))).toBe('EWOULDBLOCK');
  }, 30_000);

  it('answers EINTR to a SETLKW whose INTERRUPT was read before it, and only to that one', async () => {
    const s = await open('kumo', ['-o', 'flock']);
    await flock(s, 0, F_WRLCK);
    // The INTERRUPT takes the next unique; the SETLKW after it the one beyond.
    await s.c.interrupt(s.c.nextUnique + 1n);
    expect(await errCode(flock(s, 1, F_WRLCK, true))).toBe('EINTR');
    // An interrupt whose request never blocked (a GETATTR) leaves later waits alone.
    await s.c.interrupt(s.c.nextUnique + 1n);
    await s.c.getattr(s.node);
    const unique = s.c.nextUnique;
    let settled = '';
    const waiting = errCode(flock(s, 1, F_WRLCK, true)).then((r) => (settled = r));
    await s.c.getattr(s.node);
    expect(settled).toBe('');
    await s.c.interrupt(unique);
    expect(await waiting).toBe('EINTR');
  }, 30_000);
  it('answers a waiting lock EINTR when the front-end resizes the running ring, and serves on', async () => {
    const s = await open('kumo', ['-o', 'flock']);
    await flock(s, 0, F_WRLCK);
    let settled = '';
    const waiting = errCode(flock(s, 1, F_WRLCK, true)).then((r) => (settled = r));
    await s.c.getattr(s.node);
    expect(settled).toBe('');
    // Front-ends stop a ring before resizing it; one that does not used to leave the wait parked on a queue
    // rebuilt around it, its reply failing every retry.
    (s.c as unknown as { t: VirtioFsTransport }).t.dev.frontend.setVringNum(1, 256);
    expect(await waiting).toBe('EINTR');
    expect(await errCode(s.c.getattr(s.node))).toBe('ok');
  }, 30_000);

  it('keeps a lock waiting while the front-end stops its rings and starts them again where they were (QEMU stop/cont)', async () => {
    // The release itself must hand the lock over, not a timer retry.
    const s = await open('kumo', ['-o', 'flock'], { KUMO_FS_LOCK_RETRY_MS: '10000' });
    await flock(s, 0, F_WRLCK);
    let settled = '';
    const waiting = errCode(flock(s, 1, F_WRLCK, true)).then((r) => (settled = r));
    await s.c.getattr(s.node);
    expect(settled).toBe('');
    // QEMU's stop: GET_VRING_BASE on every ring; its cont: each set up again at the base it got. An EINTR answered
    // at the stop reached the guest's flock(2) as errno 512 (its FUSE makes a lock's EINTR ERESTARTSYS).
    // (No await in between: this client's pump blocks while a request is out and the rings are stopped.)
    const dev = (s.c as unknown as { t: VirtioFsTransport }).t.dev;
    const bases = dev.queues.map((q) => dev.frontend.getVringBase(q.index));
    for (const q of dev.queues) dev.frontend.setupVring(q.index, dev.mem!, q.dq.layout, q.kickFd, q.callFd, bases[q.index]);
    expect(await errCode(s.c.getattr(s.node))).toBe('ok');
    expect(settled).toBe('');
    await flock(s, 0, F_UNLCK);
    expect(await waiting).toBe('ok');
    expect(hostCanFlock(join(s.share, 'f'))).toBe(false);
    // An INTERRUPT that comes while the ring is stopped is answered once it is back.
    const unique = s.c.nextUnique;
    const waiting2 = errCode(flock(s, 0, F_WRLCK, true));
    await s.c.getattr(s.node);
    const base = dev.frontend.getVringBase(1);
    await s.c.interrupt(unique);
    dev.frontend.setupVring(1, dev.mem!, dev.queues[1].dq.layout, dev.queues[1].kickFd, dev.queues[1].callFd, base);
    expect(await waiting2).toBe('EINTR');
  }, 30_000);

  it('forgets INTERRUPTs kept for requests it never saw when the guest unmounts (DESTROY)', async () => {
    const s = await open('kumo', ['-o', 'flock']);
    // A new mount may number its requests from the start again: its SETLKW that gets the number an old
    // session's INTERRUPT named (one that came after its reply, say) must wait like any other.
    const target = s.c.nextUnique + 7n; // INTERRUPT, DESTROY, INIT, LOOKUP, OPEN, OPEN, SETLK, then the SETLKW
    await s.c.interrupt(target);
    await s.c.destroy();
    await s.c.init(INIT);
    const e = await s.c.lookup(FUSE_ROOT_ID, 'f');
    const a = await s.c.open(e.nodeid, O_RDWR);
    const b = await s.c.open(e.nodeid, O_RDWR);
    const s2: Session = { ...s, node: e.nodeid, fh: [a.fh, b.fh] };
    await flock(s2, 0, F_WRLCK);
    expect(s.c.nextUnique).toBe(target);
    let settled = '';
    const waiting = errCode(flock(s2, 1, F_WRLCK, true)).then((r) => (settled = r));
    await s.c.getattr(e.nodeid);
    expect(settled).toBe('');
    await flock(s2, 0, F_UNLCK);
    expect(await waiting).toBe('ok');
  }, 30_000);
});

describe('blocking POSIX locks (SETLKW with --posix-lock)', () => {
  it('under --readonly take read locks without a writable host fd (the host can still run the file)', async () => {
    const dir = mkdtempSync('/tmp/kumo-fs-locks-');
    const share = join(dir, 'share');
    mkdirSync(share);
    writeFileSync(join(share, 'prog'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const c = await connectFs({ who: 'kumo', kumoArgs: ['--posix-lock', '--readonly'] }, dir, share, cleanups, 8);
    await c.init(INIT);
    const e = await c.lookup(FUSE_ROOT_ID, 'prog');
    const { fh } = await c.open(e.nodeid, 0);
    await c.setlk(e.nodeid, fh, 1n, whole(F_RDLCK));
    // A writable fd on it, held for the lock, made exec fail with ETXTBSY.
    const run = spawnSync(join(share, 'prog'));
    expect(run.error?.message ?? '').toBe('');
    expect(run.status).toBe(0);
    expect(await errCode(s2lock(c, e.nodeid, fh))).toBe('EBADF'); // a write lock needs a writable open, as on Linux
  }, 30_000);

  it('lock an append-only file (write locks through O_APPEND) and read-lock an immutable one, as the host does', async (ctx) => {
    if (process.getuid?.() !== 0 || spawnSync('chattr', ['-V']).error) return ctx.skip();
    const s = await open('kumo', ['--posix-lock']);
    const f = join(s.share, 'f');
    const chattr = (flag: string): void => void expect(spawnSync('chattr', [flag, f]).status).toBe(0);
    chattr('+a');
    try {
      const a = await s.c.open(s.node, 1 | 0o2000); // O_WRONLY | O_APPEND
      expect(await errCode(s.c.setlk(s.node, a.fh, 10n, whole(F_WRLCK)))).toBe('ok');
      await s.c.flush(s.node, a.fh, 10n);
      const r = await s.c.open(s.node, 0);
      expect(await errCode(s.c.setlk(s.node, r.fh, 11n, range(100n, 5, F_RDLCK)))).toBe('ok');
      await s.c.flush(s.node, r.fh, 11n);
    } finally {
      chattr('-a');
    }
    chattr('+i');
    try {
      const r = await s.c.open(s.node, 0);
      expect(await errCode(s.c.setlk(s.node, r.fh, 12n, whole(F_RDLCK)))).toBe('ok');
      await s.c.flush(s.node, r.fh, 12n);
    } finally {
      chattr('-i');
    }
  }, 30_000);

  it('answer EDEADLK to the request that closes a cycle of waiting owners, as a local file system does (two owners, then three)', async () => {
    const s = await open('kumo', ['--posix-lock']);
    const codes: string[] = [];
    const wait = (owner: bigint, start: bigint): Promise<number> => {
      const k = codes.push('') - 1;
      return s.c.setlk(s.node, s.fh[0], owner, range(start, 10), true).then(() => 0, (e: FuseReplyError) => {
        codes[k] = e.code;
        return 1;
      });
    };
    // Owner 1 holds [0,10), owner 2 [10,20); 1 waits for 2's range, then 2 asks for 1's: that one closes the cycle.
    await s.c.setlk(s.node, s.fh[0], 1n, range(0n, 10), true);
    await s.c.setlk(s.node, s.fh[0], 2n, range(10n, 10), true);
    const w1 = wait(1n, 10n);
    await s.c.getattr(s.node); // parked once this is answered (same queue, in order)
    expect(await errCode(s.c.setlk(s.node, s.fh[0], 2n, range(0n, 10), true))).toBe('EDEADLK');
    // 2 gives its range up: 1's wait ends with the lock.
    await s.c.setlk(s.node, s.fh[0], 2n, range(10n, 10, F_UNLCK));
    expect(await w1).toBe(0);
    // Three owners: 1 holds [0,20) now, 3 holds [30,40), 4 holds [50,60); 1 waits for 3, 3 for 4, and 4 asks for 1.
    await s.c.setlk(s.node, s.fh[0], 3n, range(30n, 10), true);
    await s.c.setlk(s.node, s.fh[0], 4n, range(50n, 10), true);
    const w2 = wait(1n, 30n);
    const w3 = wait(3n, 50n);
    await s.c.getattr(s.node);
    expect(await errCode(s.c.setlk(s.node, s.fh[0], 4n, range(5n, 2), true))).toBe('EDEADLK');
    // A request that only waits (no cycle) still waits: 5 asks for 4's range and is not refused.
    const w4 = wait(5n, 55n);
    await s.c.getattr(s.node);
    expect(codes.filter((c) => c !== '')).toEqual([]);
    await s.c.setlk(s.node, s.fh[0], 4n, range(50n, 10, F_UNLCK));
    expect(await w3).toBe(0);
    await s.c.setlk(s.node, s.fh[0], 3n, range(30n, 10, F_UNLCK));
    await s.c.setlk(s.node, s.fh[0], 3n, range(50n, 10, F_UNLCK));
    expect(await w2).toBe(0);
    expect(await w4).toBe(0);
  }, 30_000);

  it('take a free range at once and wait for a held one while other requests go on', async () => {
    const s = await open('kumo', ['--posix-lock']);
    await s.c.setlk(s.node, s.fh[0], 1n, range(0n, 10), true);
    await s.c.setlk(s.node, s.fh[0], 2n, range(20n, 5), true);
    let settled = '';
    const waiting = s.c.setlk(s.node, s.fh[1], 2n, range(5n, 10), true).then(() => (settled = 'ok'), (e: FuseReplyError) => (settled = e.code));
    expect((await s.c.getlk(s.node, s.fh[1], 3n, range(0n, 1))).type).toBe(F_WRLCK);
    expect(settled).toBe('');
    await s.c.setlk(s.node, s.fh[0], 1n, range(0n, 10, F_UNLCK));
    await waiting;
    expect(settled).toBe('ok');
    const held = await s.c.getlk(s.node, s.fh[1], 3n, range(5n, 1));
    expect(held.type).toBe(F_WRLCK);
    expect(held.start).toBe(5n);
  }, 30_000);
});

describe('lock-deadlock.ts', () => {
  it('reads the OFD locks of /proc/self/fdinfo and finds cycles through parked requests only', () => {
    expect(parseFdinfoLocks('pos:\t0\nlock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:42 10 14\nlock:\t2: OFDLCK ADVISORY  READ -1 fe:00:42 40 EOF\n' +
      'lock:\t3: POSIX  ADVISORY  WRITE 77 fe:00:42 0 0\n')).toEqual([
      { write: true, start: 10n, end: 14n }, { write: false, start: 40n, end: 0x7fffffffffffffffn }]);
    const r = (write: boolean, start: bigint, end: bigint) => ({ write, start, end });
    expect(conflicts(r(false, 0n, 9n), r(false, 5n, 6n))).toBe(false);
    expect(conflicts(r(true, 0n, 9n), r(false, 9n, 20n))).toBe(true);
    expect(conflicts(r(true, 0n, 9n), r(true, 10n, 20n))).toBe(false);
    const inode = {};
    const want = (owner: bigint) => ({ inode, owner, ...r(true, 0n, 0n) });
    // 1 -> 2 -> 3 -> 1 through parked requests: a cycle; with 3 not waiting, none.
    const blockers = new Map<bigint, bigint[]>([[1n, [2n]], [2n, [3n]], [3n, [1n]]]);
    const by = (w: { owner: bigint }) => blockers.get(w.owner) ?? [];
    expect(closesCycle(want(1n), by, (o) => (o === 2n || o === 3n ? [want(o)] : []))).toBe(true);
    expect(closesCycle(want(1n), by, (o) => (o === 2n ? [want(o)] : []))).toBe(false);
  });
});

describe('LockWaits', () => {
  it('lets as many lock requests wait as a ring of 1024 can hold (the 257th got ENOLCK at once)', () => {
    const waits = new LockWaits(() => {
      throw new Error('no memory needed: nothing is answered');
    });
    try {
      for (let k = 0; k < 1024; k++) expect(waits.park(() => -11, 0, k, 0)).toBe(true);
      expect(waits.pending).toBe(1024);
    } finally {
      waits.close();
    }
  });
});
