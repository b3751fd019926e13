import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { FuseClient, FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MiB = 1 << 20;

/** Names of the daemon's threads (io_uring workers show up as iou-wrk-N). */
const threads = (pid: number): string[] =>
  readdirSync(`/proc/${pid}/task`).map((t) => {
    try {
      return readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  });

/** A daemon on a fresh share holding `files`, and a client 8 requests deep; close() ends both and removes the share. */
async function serve(files: Record<string, Buffer>, extra: string[] = []): Promise<{ c: FuseClient; d: ChildProcess; close: () => void }> {
  const dir = mkdtempSync('/tmp/kumo-fs-offload-');
  const share = join(dir, 'share');
  mkdirSync(share);
  for (const [name, data] of Object.entries(files)) writeFileSync(join(share, name), data);
  const sock = join(dir, 's.sock');
  const d: ChildProcess = spawn('node', [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=chroot', ...extra], {
    stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn' },
  });
  const close = (t: VirtioFsTransport | null): void => {
    t?.close();
    d.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const t = await VirtioFsTransport.connect(sock, 15_000, 256, 8);
    return { c: new FuseClient(t), d, close: () => close(t) };
  } catch (e) {
    close(null);
    throw e;
  }
}

async function readAll(extra: string[]): Promise<{ ok: boolean; ioWorkers: number }> {
  const data = randomBytes(5 * MiB + 12345);
  const { c, d, close } = await serve({ big: data }, extra);
  try {
    await c.init();
    const e = await c.lookup(FUSE_ROOT_ID, 'big');
    const { fh } = await c.open(e.nodeid, 0);
    let ok = true;
    // 8 reads in flight, 1 MiB each, over the file and past its end (short read, then empty).
    for (let round = 0; round < 3; round++) {
      const offs = Array.from({ length: 8 }, (_, k) => ((round * 8 + k) % 7) * MiB);
      const got = await Promise.all(offs.map((o) => c.read(e.nodeid, fh, o, MiB)));
      offs.forEach((o, k) => {
        if (!Buffer.from(got[k]).equals(data.subarray(Math.min(o, data.length), Math.min(o + MiB, data.length)))) ok = false;
      });
    }
    const ioWorkers = threads(d.pid!).filter((n) => n.startsWith('iou-wrk')).length;
    await c.release(e.nodeid, fh);
    return { ok, ioWorkers };
  } finally {
    close();
  }
}

describe('large READs copied on io_uring workers', () => {
  it('return the same bytes, short reads at EOF included, as inline READs (--thread-pool-size=0)', async () => {
    const offloaded = await readAll([]);
    const capped = await readAll(['--thread-pool-size=1']);
    const inline = await readAll(['--thread-pool-size=0']);
    console.log(`io_uring workers: default ${offloaded.ioWorkers}, --thread-pool-size=1 ${capped.ioWorkers}, =0 ${inline.ioWorkers}`);
    expect(offloaded.ok).toBe(true);
    expect(capped.ok).toBe(true);
    expect(inline.ok).toBe(true);
    expect(inline.ioWorkers).toBe(0);
    expect(capped.ioWorkers).toBeLessThanOrEqual(1);
    if (availableParallelism() > 1) expect(offloaded.ioWorkers).toBeGreaterThan(0);
    else console.log('single CPU: READs are never offloaded');
  }, 60_000);
});

describe('a RELEASE racing offloaded READs', () => {
  // io_uring resolves a request's fd when an io-wq worker picks it up, not at submission: READs queued
  // behind a worker's first copy would read whatever file the fd number names by then.
  it('never makes them read the file a later OPEN got the same fd number for', async () => {
    if (availableParallelism() < 2) return console.log('single CPU: READs are never offloaded');
    const { c, d, close } = await serve({ big: Buffer.alloc(8 * MiB, 0x11), other: Buffer.alloc(8 * MiB, 0x22) });
    try {
      await c.init();
      const e = await c.lookup(FUSE_ROOT_ID, 'big');
      const o = await c.lookup(FUSE_ROOT_ID, 'other');
      let wrong = 0;
      let answered = 0;
      for (let round = 0; round < 20; round++) {
        const { fh } = await c.open(e.nodeid, 0);
        // A hostile driver: RELEASE and another OPEN while READs on the handle are still out.
        const reads = Array.from({ length: 6 }, (_, k) => c.read(e.nodeid, fh, k * MiB, MiB).catch(() => null));
        const release = c.release(e.nodeid, fh);
        const open2 = c.open(o.nodeid, 0);
        const got = await Promise.all(reads);
        await release;
        const { fh: fh2 } = await open2;
        for (const g of got) {
          if (g === null || g.length === 0) continue;
          answered++;
          if (Buffer.from(g).some((b) => b !== 0x11)) wrong++;
        }
        await c.release(o.nodeid, fh2);
      }
      const workers = threads(d.pid!).filter((n) => n.startsWith('iou-wrk')).length;
      console.log(`READs racing a RELEASE: ${answered} answered with data, ${wrong} with another file's bytes; ${workers} io_uring workers`);
      expect(answered).toBeGreaterThan(0);
      expect(workers).toBeGreaterThan(0); // the READs did go to io-wq
      expect(wrong).toBe(0);
    } finally {
      close();
    }
  }, 60_000);
});

/** FSYNC of `MiB`s the host wrote to a file on the share and has not written back yet, with GETATTRs sent after it. */
async function syncBehindGetattrs(extra: string[], dirtyMiB = 64): Promise<{ order: string[]; syncMs: number }> {
  const { c, close } = await serve({ dirty: randomBytes(dirtyMiB * MiB), other: Buffer.alloc(10) }, extra);
  try {
    await c.init();
    const e = await c.lookup(FUSE_ROOT_ID, 'dirty');
    const o = await c.lookup(FUSE_ROOT_ID, 'other');
    const { fh } = await c.open(e.nodeid, 0);
    const order: string[] = [];
    const t0 = performance.now();
    let syncMs = 0;
    const sync = c.fsync(e.nodeid, fh, false).then(() => {
      syncMs = performance.now() - t0;
      order.push('fsync');
    });
    // The handle goes, and its fd number is taken by another OPEN, while the sync may still be out.
    const rest = (async () => {
      for (let k = 0; k < 3; k++) {
        await c.getattr(FUSE_ROOT_ID);
        order.push('getattr');
      }
      await c.release(e.nodeid, fh);
      const other = await c.open(o.nodeid, 0);
      order.push('release+open');
      return other.fh;
    })();
    await sync;
    await c.release(o.nodeid, await rest);
    // FSYNCDIR (fdatasync) takes the same path.
    const dir = await c.opendir(FUSE_ROOT_ID);
    await c.fsync(FUSE_ROOT_ID, dir.fh, true, true);
    await c.release(FUSE_ROOT_ID, dir.fh, true);
    return { order, syncMs };
  } finally {
    close();
  }
}

describe('FSYNC on a file system that writes to a device', () => {
  // The share is under /tmp: a disk file system here (ext4), where 64 MiB of dirty pages take tens of ms to write.
  it('waits on an io_uring worker, so later requests are answered meanwhile; inline with --thread-pool-size=0', async () => {
    if (availableParallelism() < 2) return console.log('single CPU: FSYNCs are never offloaded');
    const offloaded = await syncBehindGetattrs([]);
    const inline = await syncBehindGetattrs(['--thread-pool-size=0']);
    console.log(`FSYNC of 64 MiB: offloaded ${offloaded.syncMs.toFixed(1)} ms, order ${offloaded.order.join(',')}; ` +
      `inline ${inline.syncMs.toFixed(1)} ms, order ${inline.order.join(',')}`);
    // A GETATTR sent after the FSYNC is answered before it (all of them, with time to spare: on a loaded host the
    // sync may end before the later round trips do).
    expect(offloaded.order[0]).toBe('getattr');
    expect([...offloaded.order].sort()).toEqual(['fsync', 'getattr', 'getattr', 'getattr', 'release+open']);
    expect(inline.order[0]).toBe('fsync');
  }, 60_000);
});
