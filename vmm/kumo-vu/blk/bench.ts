import { performance } from 'node:perf_hooks';
import { Epoll, EPOLLIN } from '../../../protocol/sys/epoll.js';
import { eventfdRead } from '../../../protocol/sys/fd.js';
import {
  bits, writeBlkHeader, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
} from '../../../protocol/virtio/index.js';
import type { GuestMemory } from '../../../protocol/memory/index.js';
import type { Segment } from '../../../protocol/virtqueue/index.js';
import { disconnected, HANGUP_TOKEN, VuDevice, type VuQueue } from '../device.js';
import { KumoVuError } from '../errors.js';
import { LatencyHistogram } from '../latency.js';
import { BLK_CONFIG_READ, parseBlkConfig } from './config.js';
import { BLK_WANTED_PROTOCOL } from './verify.js';

export type BenchRw = 'randread' | 'randwrite' | 'read' | 'write';

export interface BenchOptions {
  socket: string;
  rw: BenchRw;
  bs: number;
  iodepth: number;
  queues: number;
  seconds: number;
  queueSize?: number;
  connectTimeoutMs?: number;
  /** Data buffers start this many bytes past a page boundary (0: page-aligned). */
  bufferOffset?: number;
}

export interface BenchResult {
  rw: BenchRw;
  bs: number;
  iodepth: number;
  queues: number;
  seconds: number;
  ios: number;
  errors: number;
  iops: number;
  mbPerSec: number;
  latP50Us: number;
  latP99Us: number;
  latMeanUs: number;
  /** CPU time kumo-vu used, as a percentage of one core. */
  cpuPercent: number;
}

/** Indirect descriptors are left out: three direct descriptors per request keep the driver allocation-free. */
// What a Linux guest negotiates: FLUSH + CONFIG_WCE make the device writeback, so write rows compare
// writeback with writeback (qemu-storage-daemon is writeback whatever is negotiated).
const BENCH_FEATURES = bits(
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE,
);

/** Per-queue request slots: fixed header/data/status buffers and reusable segment arrays. */
class SlotSet {
  readonly readable: Segment[][] = [];
  readonly writable: Segment[][] = [];
  /** Per slot: views of its request header and status byte in guest memory (written and read in place). */
  readonly header: DataView[] = [];
  readonly status: Uint8Array[] = [];
  readonly start: Float64Array;
  private cursor: number;
  private rng: number;

  constructor(
    dev: VuDevice,
    readonly q: VuQueue,
    mem: GuestMemory,
    private readonly o: BenchOptions,
    private readonly blocks: number,
    private readonly isWrite: boolean,
    private readonly random: boolean,
  ) {
    this.start = new Float64Array(o.iodepth);
    this.cursor = Math.floor((blocks / o.queues) * q.index);
    this.rng = (0x9e3779b9 ^ (q.index + 1) * 0x85ebca6b) >>> 0 || 1;
    for (let s = 0; s < o.iodepth; s++) {
      const hdr = dev.buffer(VIRTIO_BLK_OUTHDR_SIZE, 16);
      const data = dev.buffer(o.bs + (o.bufferOffset ?? 0), 4096) + (o.bufferOffset ?? 0);
      const st = dev.buffer(1, 1);
      const h = mem.slice(hdr, VIRTIO_BLK_OUTHDR_SIZE);
      this.header.push(new DataView(h.buffer, h.byteOffset, h.byteLength));
      this.status.push(mem.slice(st, 1));
      const hseg = { addr: hdr, len: VIRTIO_BLK_OUTHDR_SIZE };
      const dseg = { addr: data, len: o.bs };
      const sseg = { addr: st, len: 1 };
      this.readable.push(isWrite ? [hseg, dseg] : [hseg]);
      this.writable.push(isWrite ? [sseg] : [dseg, sseg]);
    }
  }

  private nextBlock(): number {
    if (this.random) {
      let x = this.rng;
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      this.rng = x >>> 0;
      return this.rng % this.blocks;
    }
    const b = this.cursor;
    this.cursor = (b + 1) % this.blocks;
    return b;
  }

  submit(slot: number, now: number): void {
    writeBlkHeader(this.header[slot], this.isWrite ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 0, (this.nextBlock() * this.o.bs) / 512);
    this.status[slot][0] = 0xff;
    this.start[slot] = now;
    if (this.q.dq.add(this.readable[slot], this.writable[slot], slot) === null) {
      throw new KumoVuError('queue full: raise --queue-size or lower --iodepth', { queue: this.q.index });
    }
  }
}

/** Runs a fixed-time load against a vhost-user-blk back-end. */
export async function benchBlk(o: BenchOptions): Promise<BenchResult> {
  const dev = await VuDevice.connect({
    socket: o.socket, features: BENCH_FEATURES, protocolFeatures: BLK_WANTED_PROTOCOL, connectTimeoutMs: o.connectTimeoutMs,
  });
  try {
    const raw = dev.readConfig(BLK_CONFIG_READ);
    if (raw === null) throw new KumoVuError('back-end did not negotiate protocol CONFIG');
    const cfg = parseBlkConfig(raw, (b) => dev.has(b));
    const blocks = Math.floor((cfg.capacity * 512) / o.bs);
    if (blocks < 1) throw new KumoVuError('disk smaller than one block', { capacity: cfg.capacity, bs: o.bs });
    if (o.bs % 512 !== 0) throw new KumoVuError('block size must be a multiple of 512', { bs: o.bs });
    // Three descriptors a request (no indirect tables); Cloud Hypervisor's back-ends allow rings of 1024 by default.
    const queueSize = o.queueSize ?? Math.max(256, 1 << Math.ceil(Math.log2(3 * o.iodepth)));
    if (o.queueSize === undefined && queueSize > 1024) {
      throw new KumoVuError(`--iodepth ${o.iodepth} needs rings of ${queueSize}: pass --queue-size ${queueSize} if the back-end allows it`);
    }
    dev.start(o.queues, queueSize, o.queues * o.iodepth * (o.bs + 4096 + 64) + (1 << 20));
    const mem = dev.mem!;
    const isWrite = o.rw === 'write' || o.rw === 'randwrite';
    const random = o.rw.startsWith('rand');
    const sets = dev.queues.map((q) => new SlotSet(dev, q, mem, o, blocks, isWrite, random));
    const ep = new Epoll(64);
    sets.forEach((s, i) => ep.add(s.q.callFd, EPOLLIN, i));
    // A back-end that goes away ends the run at once, not after the stall timeout below.
    dev.watchHangup(ep);
    const hist = new LatencyHistogram();
    let errors = 0;

    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (const s of sets) {
      for (let slot = 0; slot < o.iodepth; slot++) s.submit(slot, t0);
      s.q.kick();
    }
    const end = t0 + o.seconds * 1000;
    let stopping = false;
    let inflight = sets.length * o.iodepth;
    let now = t0;
    let set = sets[0];
    const complete = (slot: number): void => {
      hist.record((now - set.start[slot]) * 1000);
      if (set.status[slot][0] !== 0) errors++;
      if (stopping) inflight--;
      else set.submit(slot, now);
    };
    while (inflight > 0) {
      const n = ep.wait(100);
      let hungUp = false;
      for (let i = 0; i < n; i++) {
        if (ep.tokens[i] === HANGUP_TOKEN) hungUp = true;
        else eventfdRead(sets[ep.tokens[i]].q.callFd);
      }
      now = performance.now();
      if (!stopping && now >= end) stopping = true;
      for (const s of sets) {
        set = s;
        let got = 0;
        for (let k; (k = s.q.dq.drainUsed(complete)) > 0;) got += k;
        if (got > 0 && !stopping) s.q.kick();
      }
      if (hungUp) throw disconnected({ inflight });
      if (n === 0 && performance.now() > end + 5000) throw new KumoVuError('back-end stopped completing requests', { inflight });
    }
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    ep.close();
    const ios = hist.count;
    return {
      rw: o.rw, bs: o.bs, iodepth: o.iodepth, queues: o.queues, seconds: elapsed, ios, errors,
      iops: ios / elapsed,
      mbPerSec: (ios * o.bs) / elapsed / 1e6,
      latP50Us: hist.percentile(50),
      latP99Us: hist.percentile(99),
      latMeanUs: hist.meanUs,
      cpuPercent: ((cpu.user + cpu.system) / 1e6 / elapsed) * 100,
    };
  } finally {
    dev.close();
  }
}

export function formatBenchResult(r: BenchResult): string {
  return [
    `${r.rw} bs=${r.bs} iodepth=${r.iodepth} queues=${r.queues}: ${Math.round(r.iops)} IOPS, ${r.mbPerSec.toFixed(1)} MB/s`,
    `  latency p50 ${r.latP50Us} us, p99 ${r.latP99Us} us, mean ${r.latMeanUs.toFixed(1)} us`,
    `  kumo-vu CPU ${r.cpuPercent.toFixed(0)}% of one core, ${r.ios} requests in ${r.seconds.toFixed(2)} s, ${r.errors} errors`,
  ].join('\n');
}
