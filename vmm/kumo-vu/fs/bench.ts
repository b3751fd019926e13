import { AttrOut, EntryOut, FuseClient, FUSE_ROOT_ID, OpenOut, OUT_HEADER_SIZE, WriteOut } from '../../../protocol/fuse/index.js';
import { RawFuseReply, RawFuseRequest } from '../../../protocol/fuse/raw.js';
import type { RawSlot, VirtioFsTransport } from './transport.js';

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

/** What a request stream holds between its requests. */
interface Stream {
  /** Request slot on the request queue, and one on hiprio for FORGET. */
  slot: RawSlot;
  hp: RawSlot;
  req: RawFuseRequest;
  rep: RawFuseReply;
  forget: RawFuseRequest;
  /** Step of the current operation, and the unique of the request in flight. */
  phase: number;
  unique: number;
  nodeid: number;
  fh: number;
  /** Index of the current operation (across streams). */
  op: number;
  /** Units the finished operation counts for (bytes of a READ, else 1). */
  units: number;
}

/**
 * One benchmark case over `depth` independent request streams, like `fio --iodepth`: `begin(s)` writes and
 * submits a stream's first request of an operation; `reply(s, usedLen)` consumes a reply and either submits
 * the operation's next request (false) or ends the operation (true). Requests are written straight into the
 * slots in guest memory (protocol/fuse/raw.ts) and replies read there: the client does no per-request
 * allocation or promise, so that its own cost (it shares the CPUs with the daemon) stays small.
 */
class StreamRunner {
  private readonly streams: Stream[] = [];
  private readonly byToken: Stream[] = [];
  /** Above FuseClient's counter, which set-up and clean-up use on the same connection. */
  private unique = 2 ** 40;
  private nextOp = 0;
  /** Chains submitted and not back yet: a run that fails waits for them, so clean-up gets only its own replies. */
  private outstanding = 0;

  constructor(private readonly t: VirtioFsTransport) {
    const slots = t.rawSlots();
    const req = slots.filter((s) => !s.hiprio);
    const hp = slots.filter((s) => s.hiprio);
    for (let i = 0; i < req.length; i++) {
      const st: Stream = {
        slot: req[i], hp: hp[i], req: new RawFuseRequest(req[i].request), rep: new RawFuseReply(req[i].reply),
        forget: new RawFuseRequest(hp[i].request), phase: 0, unique: 0, nodeid: 0, fh: 0, op: 0, units: 1,
      };
      this.streams.push(st);
      this.byToken[req[i].token] = st;
      this.byToken[hp[i].token] = st;
    }
  }

  /** A fresh unique for stream s's next request. */
  u(s: Stream): number {
    s.unique = this.unique++;
    return s.unique;
  }

  submit(s: Stream, reqLen: number, replyLen: number): void {
    this.outstanding++;
    this.t.rawSubmit(s.slot, reqLen, replyLen);
  }

  /** FORGET on hiprio: its chain comes back without a reply. */
  submitForget(s: Stream, nodeid: number): void {
    this.outstanding++;
    this.t.rawSubmit(s.hp, s.forget.forget(this.u(s), nodeid, 1), 0);
  }

  run(seconds: number, begin: (s: Stream) => void, reply: (s: Stream, usedLen: number) => boolean): Timed {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    let ops = 0;
    let units = 0;
    let running = 0;
    this.nextOp = 0;
    const start = (s: Stream): void => {
      s.phase = 0;
      s.units = 1;
      s.op = this.nextOp++;
      running++;
      begin(s);
    };
    // A reply that fails a check (CREATE: ENOSPC) ends the run; the other streams' chains still in flight are
    // waited for first, or the clean-up's FuseClient calls would be handed their replies.
    let failure: { error: unknown } | null = null;
    const onUsed = (token: number, len: number): void => {
      this.outstanding--;
      if (failure !== null) return;
      const s = this.byToken[token];
      try {
        if (!reply(s, len)) return;
      } catch (e) {
        failure = { error: e };
        return;
      }
      ops++;
      units += s.units;
      running--;
      if (performance.now() < end) start(s);
    };
    try {
      for (const s of this.streams) start(s);
      while (failure === null ? running > 0 : this.outstanding > 0) this.t.rawWait(onUsed);
    } catch (e) {
      failure ??= { error: e };
    }
    if (failure !== null) throw (failure as { error: unknown }).error;
    const c = process.cpuUsage(c0);
    return { ops, units, secs: (performance.now() - t0) / 1000, cpu: (c.user + c.system) / 1e6 };
  }
}

/** Runs f(i) for i in [0, n) with at most `depth` calls in flight. */
async function each(n: number, depth: number, f: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const job = async (): Promise<void> => {
    while (next < n) await f(next++);
  };
  await Promise.all(Array.from({ length: Math.min(depth, n) }, job));
}

const REPLY_ENTRY = OUT_HEADER_SIZE + EntryOut.size;
const REPLY_ATTR = OUT_HEADER_SIZE + AttrOut.size;
const REPLY_CREATE = REPLY_ENTRY + OpenOut.size;
const REPLY_WRITE = OUT_HEADER_SIZE + WriteOut.size;

/**
 * Runs the four cases in a scratch directory under the share root (created, then removed), each with
 * `depth` requests in flight (depth independent request streams, like `fio --iodepth`). Set-up and
 * clean-up go through FuseClient; the timed loops write requests straight into guest memory.
 */
export async function benchFs(c: FuseClient, t: VirtioFsTransport, seconds: number, depth = 1): Promise<FsBenchResult> {
  await c.init();
  const dirName = `kumo-bench-${process.pid}`;
  const dir = (await c.mkdir(FUSE_ROOT_ID, dirName)).nodeid;
  try {
    return await timedCases(c, t, seconds, depth, dir);
  } finally {
    await removeScratch(c, dir, dirName, depth).catch(() => undefined);
  }
}

/** The four timed cases in the scratch directory `dir`. */
async function timedCases(c: FuseClient, t: VirtioFsTransport, seconds: number, depth: number, dir: number): Promise<FsBenchResult> {
  const data = await c.create(dir, 'data', O_WRONLY | O_CREAT | O_TRUNC, 0o100644);
  const chunk = new Uint8Array(1 << 20).fill(0x5a);
  const FILE = 64 << 20;
  await each(FILE >> 20, depth, (k) => c.write(data.entry.nodeid, data.fh, k << 20, chunk));
  await c.release(data.entry.nodeid, data.fh);
  const node = data.entry.nodeid;
  const { fh } = await c.open(node, O_RDONLY);

  const r = new StreamRunner(t);
  const enc = new TextEncoder();
  const dataZ = enc.encode('data\0');
  const lk = r.run(seconds, (s) => r.submit(s, s.req.lookup(r.u(s), dir, dataZ), REPLY_ENTRY), (s, len) => {
    switch (s.phase++) {
      case 0:
        s.rep.check(len, s.unique, 'LOOKUP');
        s.nodeid = s.rep.entryNodeid();
        r.submit(s, s.req.getattr(r.u(s), s.nodeid), REPLY_ATTR);
        return false;
      case 1:
        s.rep.check(len, s.unique, 'GETATTR');
        r.submitForget(s, s.nodeid);
        return false;
      default:
        return true;
    }
  });
  let seed = 12345;
  const rr = r.run(seconds, (s) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    r.submit(s, s.req.read(r.u(s), node, fh, (seed % (FILE / 4096)) * 4096, 4096), OUT_HEADER_SIZE + 4096);
  }, (s, len) => {
    s.rep.check(len, s.unique, 'READ');
    return true;
  });
  const sr = r.run(seconds, (s) => {
    r.submit(s, s.req.read(r.u(s), node, fh, (s.op % (FILE >> 20)) * (1 << 20), 1 << 20), OUT_HEADER_SIZE + (1 << 20));
  }, (s, len) => {
    s.units = s.rep.check(len, s.unique, 'READ');
    return true;
  });
  await c.release(node, fh);
  const small = new Uint8Array(4096).fill(1);
  const nameZ = new Uint8Array(32);
  const cw = r.run(seconds, (s) => {
    const n = enc.encodeInto(`f${s.op}`, nameZ).written;
    nameZ[n] = 0;
    r.submit(s, s.req.create(r.u(s), dir, nameZ.subarray(0, n + 1), O_WRONLY | O_CREAT | O_TRUNC, 0o100644), REPLY_CREATE);
  }, (s, len) => {
    switch (s.phase++) {
      case 0:
        s.rep.check(len, s.unique, 'CREATE');
        s.nodeid = s.rep.entryNodeid();
        s.fh = s.rep.createFh();
        r.submit(s, s.req.write(r.u(s), s.nodeid, s.fh, 0, small), REPLY_WRITE);
        return false;
      case 1:
        s.rep.check(len, s.unique, 'WRITE');
        r.submit(s, s.req.flush(r.u(s), s.nodeid, s.fh), OUT_HEADER_SIZE);
        return false;
      case 2:
        s.rep.check(len, s.unique, 'FLUSH');
        r.submit(s, s.req.release(r.u(s), s.nodeid, s.fh), OUT_HEADER_SIZE);
        return false;
      case 3:
        s.rep.check(len, s.unique, 'RELEASE');
        r.submitForget(s, s.nodeid);
        return false;
      default:
        return true;
    }
  });
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

const dec = new TextDecoder();

/**
 * Removes the scratch directory, whatever a run left in it (also after a failure midway), so repeated runs start
 * from the same state. Each name is looked up first, as a kernel would: QEMU's virtiofsd refuses UNLINK of unknown
 * inodes. Forgotten after: tens of thousands of inodes held would run either daemon out of file descriptors.
 */
async function removeScratch(c: FuseClient, dir: number, dirName: string, depth: number): Promise<void> {
  const { fh } = await c.opendir(dir);
  const names: string[] = [];
  try {
    for (let off = 0n; ;) {
      const es = await c.readdir(dir, fh, off);
      if (es.length === 0) break;
      for (const e of es) {
        const name = dec.decode(e.name);
        if (name !== '.' && name !== '..') names.push(name);
        off = e.off;
      }
    }
  } finally {
    await c.release(dir, fh, true);
  }
  await each(names.length, depth, async (i) => {
    const e = await c.lookup(dir, names[i]).catch(() => null);
    if (e === null) return;
    await c.unlink(dir, names[i]).catch(() => undefined);
    await c.forget(e.nodeid, 1);
  });
  await c.lookup(FUSE_ROOT_ID, dirName).then(() => c.rmdir(FUSE_ROOT_ID, dirName));
}
