import { FuseClient, FUSE_ROOT_ID, Op, ReadIn } from '../../../protocol/fuse/index.js';

export interface FsBenchResult {
  /** Requests in flight on the request queue. */
  depth: number;
  lookupGetattrOps: number;
  randRead4kIops: number;
  seqRead1mMBps: number;
  createWriteCloseFiles: number;
  /** This client's CPU over the four cases, % of one core: near 100 it, not the daemon, sets the pace. */
  clientCpuPercent: number;
}

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;

interface Timed {
  ops: number;
  units: number;
  secs: number;
  /** CPU seconds this process used meanwhile. */
  cpu: number;
}

async function timed(seconds: number, depth: number, op: (i: number) => Promise<number>): Promise<Timed> {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  let ops = 0;
  let units = 0;
  let next = 0;
  const job = async (): Promise<void> => {
    while (process.hrtime.bigint() < end) {
      // Not `units += await ...`: that reads `units` before the await and loses the other streams' bytes.
      const n = await op(next++);
      units += n;
      ops++;
    }
  };
  await Promise.all(Array.from({ length: depth }, job));
  const c = process.cpuUsage(c0);
  return { ops, units, secs: Number(process.hrtime.bigint() - t0) / 1e9, cpu: (c.user + c.system) / 1e6 };
}

/** Runs f(i) for i in [0, n) with at most `depth` calls in flight. */
async function each(n: number, depth: number, f: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const job = async (): Promise<void> => {
    while (next < n) await f(next++);
  };
  await Promise.all(Array.from({ length: Math.min(depth, n) }, job));
}

/** READ without copying the data out of the reply (the client only counts bytes). */
async function readLen(c: FuseClient, node: number, fh: number, offset: number, size: number): Promise<number> {
  return (await c.call(Op.READ, node, [ReadIn.pack({ fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 })], size, 'READ')).length;
}

/**
 * Runs the four cases in a scratch directory under the share root (created, then removed), each with
 * `depth` requests in flight (depth independent request streams, like `fio --iodepth`).
 */
export async function benchFs(c: FuseClient, seconds: number, depth = 1): Promise<FsBenchResult> {
  await c.init();
  const dirName = `kumo-bench-${process.pid}`;
  const dir = (await c.mkdir(FUSE_ROOT_ID, dirName)).nodeid;
  const data = await c.create(dir, 'data', O_WRONLY | O_CREAT | O_TRUNC, 0o100644);
  const chunk = new Uint8Array(1 << 20).fill(0x5a);
  const FILE = 64 << 20;
  await each(FILE >> 20, depth, (k) => c.write(data.entry.nodeid, data.fh, k << 20, chunk));
  await c.release(data.entry.nodeid, data.fh);

  const lk = await timed(seconds, depth, async () => {
    const e = await c.lookup(dir, 'data');
    await c.getattr(e.nodeid);
    await c.forget(e.nodeid, 1);
    return 1;
  });
  const node = data.entry.nodeid;
  const { fh } = await c.open(node, O_RDONLY);
  let seed = 12345;
  const rr = await timed(seconds, depth, () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return readLen(c, node, fh, (seed % (FILE / 4096)) * 4096, 4096);
  });
  const sr = await timed(seconds, depth, (i) => readLen(c, node, fh, (i % (FILE >> 20)) << 20, 1 << 20));
  await c.release(node, fh);
  const small = new Uint8Array(4096).fill(1);
  const cw = await timed(seconds, depth, async (i) => {
    const r = await c.create(dir, `f${i}`, O_WRONLY | O_CREAT | O_TRUNC, 0o100644);
    await c.write(r.entry.nodeid, r.fh, 0, small);
    await c.flush(r.entry.nodeid, r.fh);
    await c.release(r.entry.nodeid, r.fh);
    await c.forget(r.entry.nodeid, 1);
    return 1;
  });
  // Clean up so repeated runs start from the same state. Look each name up first, as a kernel
  // would: QEMU's virtiofsd refuses UNLINK of unknown inodes.
  const names = [...Array.from({ length: cw.ops + depth }, (_, i) => `f${i}`), 'data'];
  await each(names.length, depth, (i) => c.lookup(dir, names[i]).then(() => c.unlink(dir, names[i])).catch(() => undefined));
  await c.lookup(FUSE_ROOT_ID, dirName).then(() => c.rmdir(FUSE_ROOT_ID, dirName)).catch(() => undefined);
  return {
    depth,
    lookupGetattrOps: Math.round(lk.ops / lk.secs),
    randRead4kIops: Math.round(rr.ops / rr.secs),
    seqRead1mMBps: Math.round(sr.units / sr.secs / 1e6),
    createWriteCloseFiles: Math.round(cw.ops / cw.secs),
    clientCpuPercent: Math.round((100 * (lk.cpu + rr.cpu + sr.cpu + cw.cpu)) / (lk.secs + rr.secs + sr.secs + cw.secs)),
  };
}

export function formatFsBench(r: FsBenchResult): string {
  return [
    `lookup+getattr     ${r.lookupGetattrOps} ops/s`,
    `4k random read     ${r.randRead4kIops} IOPS`,
    `1 MiB seq read     ${r.seqRead1mMBps} MB/s`,
    `create+write+close ${r.createWriteCloseFiles} files/s`,
    `client CPU         ${r.clientCpuPercent}% of one core`,
  ].join('\n');
}
