import {
  bits, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from '../../../protocol/virtio/index.js';
import { ProtocolFeature, protocolFeatures } from '../../../protocol/vhost-user/index.js';
import type { Segment } from '../../../protocol/virtqueue/index.js';
import { VuDevice } from '../device.js';
import { featureNames, protocolFeatureNames } from '../features.js';
import { BlkClient } from './client.js';
import { DirtyLogProbe } from '../dirty-log-probe.js';
import { BLK_CONFIG_READ, parseBlkConfig, type BlkDeviceConfig } from './config.js';

export const BLK_WANTED_FEATURES = bits(
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_CONFIG_WCE,
);
export const BLK_WANTED_PROTOCOL = protocolFeatures(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.LOG_SHMFD);

export interface Check {
  name: string;
  ok: boolean;
  detail?: string;
}

export interface VerifyReport {
  ok: boolean;
  socket: string;
  offeredFeatures: string[];
  features: string[];
  protocolFeatures: string[];
  maxQueues: number;
  queuesTested: number;
  config: BlkDeviceConfig | null;
  id: string | null;
  checks: Check[];
}

export interface VerifyOptions {
  socket: string;
  queues?: number;
  queueSize?: number;
  connectTimeoutMs?: number;
  /** Runs once every spot is written and before they are read back (tests change the image behind the back-end here). */
  afterWrites?: () => void;
}

const SECTOR = 512;
const CHUNK = 64 * 1024;

/** Deterministic pattern unique to this run, position and pass: stale or misplaced data cannot match. */
function fillPattern(buf: Uint8Array, seed: number, byteOffset: number): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = 0; i + 4 <= buf.length; i += 4) {
    let x = (seed ^ Math.imul(byteOffset + i, 0x9e3779b1)) >>> 0;
    x ^= x >>> 15;
    x = Math.imul(x, 0x85ebca6b) >>> 0;
    dv.setUint32(i, x ^ (x >>> 13), true);
  }
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Negotiates with a vhost-user-blk back-end and checks it stores and returns data correctly on every queue. */
export async function verifyBlk(o: VerifyOptions): Promise<VerifyReport> {
  const checks: Check[] = [];
  const check = (name: string, ok: boolean, detail?: string) => {
    checks.push({ name, ok, ...(detail === undefined ? {} : { detail }) });
    return ok;
  };
  const dev = await VuDevice.connect({
    socket: o.socket, features: BLK_WANTED_FEATURES, protocolFeatures: BLK_WANTED_PROTOCOL, connectTimeoutMs: o.connectTimeoutMs,
  });
  const report: VerifyReport = {
    ok: false,
    socket: o.socket,
    offeredFeatures: featureNames(dev.offered, 'blk'),
    features: featureNames(dev.features, 'blk'),
    protocolFeatures: protocolFeatureNames(dev.protocolFeatures),
    maxQueues: dev.maxQueues,
    queuesTested: 0,
    config: null,
    id: null,
    checks,
  };
  try {
    check('VERSION_1 negotiated', dev.has(VIRTIO_F_VERSION_1));
    const raw = dev.readConfig(BLK_CONFIG_READ);
    if (raw === null) {
      check('config readable (protocol CONFIG)', false);
      return report;
    }
    const cfg = parseBlkConfig(raw, (b) => dev.has(b));
    report.config = cfg;
    check('capacity > 0', cfg.capacity > 0, `${cfg.capacity} sectors`);
    const blk = cfg.blkSize;
    check('blk_size is a power of two >= 512', blk >= 512 && (blk & (blk - 1)) === 0, `${blk}`);
    if (cfg.numQueues !== null) check('config num_queues matches GET_QUEUE_NUM', cfg.numQueues === dev.maxQueues, `${cfg.numQueues} vs ${dev.maxQueues}`);

    const nq = o.queues ?? dev.maxQueues;
    if (!check(`${nq} queue(s) asked for, the back-end has ${dev.maxQueues}`, nq <= dev.maxQueues)) return report;
    report.queuesTested = nq;
    dev.start(nq, o.queueSize ?? 128, 1 << 20);
    const client = new BlkClient(dev);
    const mem = dev.mem!;
    const wbuf = dev.buffer(CHUNK, 4096);
    const rbuf = dev.buffer(CHUNK, 4096);
    const capBytes = cfg.capacity * SECTOR;
    const len = Math.max(blk, Math.min(CHUNK, Math.floor(capBytes / 4 / blk) * blk));
    const ro = dev.has(VIRTIO_BLK_F_RO);
    const seed = (Math.random() * 0x1_0000_0000) >>> 0;
    const expect = new Uint8Array(len);
    const got = new Uint8Array(len);
    const mid = Math.floor(capBytes / 2 / blk) * blk;
    // Each queue uses its own spot near the start, middle and end of the disk.
    const points = (qi: number): [string, number][] => [
      ['start', qi * len],
      ['middle', mid + qi * len],
      ['end', capBytes - (qi + 1) * len],
    ];
    const segMax = cfg.segMax ?? 1;
    /** Every spot written, to be read back once all are: a back-end that puts data at the wrong offset overwrites one with another. */
    const written: { name: string; at: number; seed: number; qi: number }[] = [];

    dev.queues.forEach((q, qi) => {
      for (const [where, byteOff] of points(qi)) {
        const at = Math.max(0, Math.min(byteOff, capBytes - len));
        const sector = at / SECTOR;
        const name = `queue ${qi}: ${where} (sector ${sector}, ${len} B)`;
        if (!ro) {
          fillPattern(expect, seed + qi, at);
          mem.write(wbuf, expect);
          const ws = client.write(q, sector, [{ addr: wbuf, len }]);
          if (!check(`${name} write`, ws === VIRTIO_BLK_S_OK, `status ${ws}`)) continue;
          written.push({ name, at, seed: seed + qi, qi });
        }
        mem.fill(rbuf, len, 0xa5);
        const rs = client.read(q, sector, [{ addr: rbuf, len }]);
        if (!check(`${name} read`, rs === VIRTIO_BLK_S_OK, `status ${rs}`)) continue;
        if (!ro) {
          mem.read(rbuf, got);
          const d = firstDiff(expect, got);
          check(`${name} data matches`, d < 0, d < 0 ? undefined : `first difference at byte ${d}`);
        }
      }
    });

    if (ro) {
      // A read-only device must refuse a write and keep its data: read, write a pattern over it, read again.
      const before = new Uint8Array(len);
      mem.fill(rbuf, len, 0xa5);
      const r1 = client.read(dev.queues[0], 0, [{ addr: rbuf, len }]);
      mem.read(rbuf, before);
      fillPattern(expect, seed, 0);
      mem.write(wbuf, expect);
      const ws = client.write(dev.queues[0], 0, [{ addr: wbuf, len }]);
      check('write refused on the read-only device', ws !== VIRTIO_BLK_S_OK, `status ${ws}`);
      mem.fill(rbuf, len, 0xa5);
      const r2 = client.read(dev.queues[0], 0, [{ addr: rbuf, len }]);
      mem.read(rbuf, got);
      const d = r1 === VIRTIO_BLK_S_OK && r2 === VIRTIO_BLK_S_OK ? firstDiff(before, got) : 0;
      check('read-only data unchanged after the refused write', d < 0, d < 0 ? undefined : `status ${r1}/${r2}, first difference at byte ${d}`);
    }

    o.afterWrites?.();
    // Every spot again, through the next queue, now that all were written: misplaced or aliased writes show here.
    for (const w of written) {
      fillPattern(expect, w.seed, w.at);
      mem.fill(rbuf, len, 0xa5);
      const q = dev.queues[(w.qi + 1) % nq];
      const rs = client.read(q, w.at / SECTOR, [{ addr: rbuf, len }]);
      mem.read(rbuf, got);
      const d = rs === VIRTIO_BLK_S_OK ? firstDiff(expect, got) : 0;
      check(`${w.name} still holds its data after every write (read on queue ${(w.qi + 1) % nq})`, rs === VIRTIO_BLK_S_OK && d < 0,
        rs !== VIRTIO_BLK_S_OK ? `status ${rs}` : d < 0 ? undefined : `first difference at byte ${d}`);
    }

    // Multi-segment: written in uneven pieces, read back in other pieces.
    const q0 = dev.queues[0];
    const msLen = 8192;
    const writeSegs = splitSegments(wbuf, msLen, [512, 3584, 1024, 1000, 24, 2048], segMax);
    const readSegs = splitSegments(rbuf, msLen, [4096, 2560, 1536], segMax);
    const msAt = Math.floor(capBytes / 3 / blk) * blk;
    if (msAt + msLen <= capBytes) {
      const e = expect.subarray(0, msLen);
      const g = got.subarray(0, msLen);
      if (!ro) {
        fillPattern(e, seed ^ 0x5a5a, msAt);
        mem.write(wbuf, e);
        const ws = client.write(q0, msAt / SECTOR, writeSegs);
        check(`multi-segment write (${writeSegs.length} segments)`, ws === VIRTIO_BLK_S_OK, `status ${ws}`);
      }
      mem.fill(rbuf, msLen, 0x5a);
      const rs = client.read(q0, msAt / SECTOR, readSegs);
      check(`multi-segment read (${readSegs.length} segments)`, rs === VIRTIO_BLK_S_OK, `status ${rs}`);
      if (!ro) {
        mem.read(rbuf, g);
        const d = firstDiff(e, g);
        check('multi-segment data matches', d < 0, d < 0 ? undefined : `first difference at byte ${d}`);
      }
    }

    const oob = client.read(q0, cfg.capacity, [{ addr: rbuf, len: SECTOR }]);
    check('read past the end is refused', oob !== VIRTIO_BLK_S_OK, `status ${oob}`);

    if (dev.has(VIRTIO_BLK_F_FLUSH)) {
      const fs = client.run(q0, VIRTIO_BLK_T_FLUSH, 0, []).status;
      check('FLUSH', fs === VIRTIO_BLK_S_OK, `status ${fs}`);
    }
    const idr = client.run(q0, VIRTIO_BLK_T_GET_ID, 0, [{ addr: rbuf, len: VIRTIO_BLK_ID_BYTES }]).status;
    if (idr === VIRTIO_BLK_S_OK) {
      const idBytes = new Uint8Array(VIRTIO_BLK_ID_BYTES);
      mem.read(rbuf, idBytes);
      const nul = idBytes.indexOf(0);
      report.id = new TextDecoder().decode(idBytes.subarray(0, nul < 0 ? idBytes.length : nul));
    }
    check('GET_ID answered (OK or UNSUPP)', idr === VIRTIO_BLK_S_OK || idr === VIRTIO_BLK_S_UNSUPP, `status ${idr}`);

    if (DirtyLogProbe.offered(dev)) {
      // Live migration: while the front-end logs, what the back-end writes into guest memory must be marked.
      const probe = DirtyLogProbe.start(dev);
      try {
        const rs = client.read(q0, 0, [{ addr: rbuf, len: blk }]);
        check('dirty log: a read\'s data, its status byte and the used ring are marked', rs === VIRTIO_BLK_S_OK
          && probe.marked(rbuf) && probe.marked(client.statusOf(q0)) && probe.marked(q0.dq.layout.usedAddr),
        `status ${rs}, data ${probe.marked(rbuf)}, status byte ${probe.marked(client.statusOf(q0))}, used ring ${probe.marked(q0.dq.layout.usedAddr)}`);
        if (!ro) {
          probe.clear();
          const ws = client.write(q0, 0, [{ addr: wbuf, len: blk }]);
          check('dirty log: a write\'s data (only read by the back-end) is not marked', ws === VIRTIO_BLK_S_OK && !probe.marked(wbuf), `status ${ws}`);
        }
      } finally {
        probe.stop();
      }
    }
  } catch (e) {
    check('no protocol or device error', false, e instanceof Error ? e.message : String(e));
  } finally {
    dev.close();
  }
  report.ok = checks.every((c) => c.ok);
  return report;
}

/** Splits [addr, addr+total) into pieces of the given sizes (the last one takes the rest), at most `max` pieces. */
function splitSegments(addr: number, total: number, sizes: number[], max: number): Segment[] {
  const segs: Segment[] = [];
  let off = 0;
  for (const s of sizes) {
    if (off >= total || segs.length === max - 1) break;
    const n = Math.min(s, total - off);
    segs.push({ addr: addr + off, len: n });
    off += n;
  }
  if (off < total) segs.push({ addr: addr + off, len: total - off });
  return segs;
}

export function formatVerifyReport(r: VerifyReport): string {
  const lines = [
    `vhost-user-blk verify: ${r.socket}`,
    `  offered features: ${r.offeredFeatures.join(' ')}`,
    `  negotiated:       ${r.features.join(' ')}`,
    `  protocol:         ${r.protocolFeatures.join(' ')}`,
    `  queues:           ${r.queuesTested} tested of ${r.maxQueues}`,
  ];
  if (r.config) {
    const c = r.config;
    lines.push(`  capacity:         ${c.capacity} sectors (${(c.capacity * 512 / 2 ** 20).toFixed(1)} MiB), blk_size ${c.blkSize}, seg_max ${c.segMax ?? '-'}, size_max ${c.sizeMax ?? '-'}, num_queues ${c.numQueues ?? '-'}`);
  }
  if (r.id !== null) lines.push(`  id:               ${JSON.stringify(r.id)}`);
  for (const c of r.checks) lines.push(`  ${c.ok ? 'PASS' : 'FAIL'}  ${c.name}${c.detail ? ` (${c.detail})` : ''}`);
  lines.push(r.ok ? 'RESULT: PASS' : 'RESULT: FAIL');
  return lines.join('\n');
}
