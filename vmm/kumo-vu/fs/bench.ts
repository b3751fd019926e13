import { FuseClient, FUSE_ROOT_ID } from '../../../protocol/fuse/index.js';

export interface FsBenchResult {
  lookupGetattrOps: number;
  randRead4kIops: number;
  seqRead1mMBps: number;
  createWriteCloseFiles: number;
}

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;

async function timed(seconds: number, op: (i: number) => Promise<number>): Promise<{ ops: number; units: number; secs: number }> {
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  let ops = 0;
  let units = 0;
  while (process.hrtime.bigint() < end) {
    units += await op(ops);
    ops++;
  }
  return { ops, units, secs: Number(process.hrtime.bigint() - t0) / 1e9 };
}

/** Runs the four cases in a scratch directory `kumo-bench` under the share root (created, then removed). */
export async function benchFs(c: FuseClient, seconds: number): Promise<FsBenchResult> {
  await c.init();
  const dir = (await c.mkdir(FUSE_ROOT_ID, `kumo-bench-${process.pid}`)).nodeid;
  const data = (await c.create(dir, 'data', O_WRONLY | O_CREAT | O_TRUNC, 0o100644));
  const chunk = new Uint8Array(1 << 20).fill(0x5a);
  const FILE = 64 << 20;
  for (let off = 0; off < FILE; off += chunk.length) await c.write(data.entry.nodeid, data.fh, off, chunk);
  await c.release(data.entry.nodeid, data.fh);

  const lk = await timed(seconds, async () => {
    const e = await c.lookup(dir, 'data');
    await c.getattr(e.nodeid);
    await c.forget(e.nodeid, 1);
    return 1;
  });
  const node = data.entry.nodeid;
  const { fh } = await c.open(node, O_RDONLY);
  let seed = 12345;
  const rr = await timed(seconds, async () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const off = (seed % (FILE / 4096)) * 4096;
    return (await c.read(node, fh, off, 4096)).length;
  });
  const sr = await timed(seconds, async (i) => (await c.read(node, fh, (i % (FILE >> 20)) << 20, 1 << 20)).length);
  await c.release(node, fh);
  const small = new Uint8Array(4096).fill(1);
  const cw = await timed(seconds, async (i) => {
    const r = await c.create(dir, `f${i}`, O_WRONLY | O_CREAT | O_TRUNC, 0o100644);
    await c.write(r.entry.nodeid, r.fh, 0, small);
    await c.flush(r.entry.nodeid, r.fh);
    await c.release(r.entry.nodeid, r.fh);
    await c.forget(r.entry.nodeid, 1);
    return 1;
  });
  // Clean up so repeated runs start from the same state.
  // Look each name up first, as a kernel would: QEMU's virtiofsd refuses UNLINK of unknown inodes.
  for (const name of [...Array.from({ length: cw.ops }, (_, i) => `f${i}`), 'data']) {
    await c.lookup(dir, name).then(() => c.unlink(dir, name)).catch(() => undefined);
  }
  await c.lookup(FUSE_ROOT_ID, `kumo-bench-${process.pid}`).then(() => c.rmdir(FUSE_ROOT_ID, `kumo-bench-${process.pid}`)).catch(() => undefined);
  return {
    lookupGetattrOps: Math.round(lk.ops / lk.secs),
    randRead4kIops: Math.round(rr.ops / rr.secs),
    seqRead1mMBps: Math.round(sr.units / sr.secs / 1e6),
    createWriteCloseFiles: Math.round(cw.ops / cw.secs),
  };
}

export function formatFsBench(r: FsBenchResult): string {
  return [
    `lookup+getattr     ${r.lookupGetattrOps} ops/s`,
    `4k random read     ${r.randRead4kIops} IOPS`,
    `1 MiB seq read     ${r.seqRead1mMBps} MB/s`,
    `create+write+close ${r.createWriteCloseFiles} files/s`,
  ].join('\n');
}
