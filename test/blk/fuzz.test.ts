import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, openSync, closeSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { BlkQueueEngine, type BlkEngineImage, type BlkEngineOptions, type CompletionMode } from '../../backends/vhost-user-blk/engine.js';
import {
  encodeBlkDiscardSegment, encodeBlkHeader, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
} from '../../protocol/virtio/index.js';
import type { Segment } from '../../protocol/virtqueue/index.js';
import { IMAGE_FLAGS_LENGTH } from '../../backends/vhost-user-blk/bounce.js';
import { BlkTestDriver } from './harness.js';
import { fuzzSeed, Rng } from '../fuzz-rng.js';

/**
 * Seeded random virtio-blk traffic straight into the queue engine, checked against a model of the disk:
 * reads of sectors whose last acked write is known must return exactly that data, whatever else was in
 * flight (odd lengths, requests past the end, bad discard ranges, missing or oversized status bytes).
 * Nothing may throw, every chain must come back, the image must never grow.
 */

const SIZE = 1 << 20;
const SECTORS = SIZE / 512;
const BATCHES = Number(process.env.FUZZ_BATCHES ?? 250);
const SLOTS = 24;
const DATA = 64 << 10;


interface Req {
  type: number;
  sector: number;
  /** Sectors the request may change, when it is in range (writes, zeroes, discards). */
  writes: [number, number][];
  data: Segment[];
  statusAddr: number;
  /** Bytes written by an OUT (its payload), for the model. */
  payload: Buffer | null;
}

const variants: { name: string; img: Partial<BlkEngineImage>; writethrough?: boolean; completion?: CompletionMode; pooled?: BlkEngineOptions['pooled'] }[] = [
  { name: 'io_uring', img: {} },
  { name: 'io_uring, writethrough, completions waited for', img: {}, writethrough: true, completion: 'wait' },
  { name: 'memory-backed (inline preadv/pwritev)', img: { memoryBacked: true } },
  { name: 'writes punted (inline small writes)', img: { writesPunted: true } },
  // O_DIRECT's rules without O_DIRECT: requests off 4096 go through the pooled aligned buffers, sectors inside a block are patched.
  { name: 'O_DIRECT with 4096-byte blocks (pooled buffers, patched blocks)', img: { alignment: 4096 } },
  { name: 'O_DIRECT with 4096-byte blocks, writethrough', img: { alignment: 4096 }, writethrough: true },
  // 8 KiB pieces and 16 KiB of buffers: requests go in pieces and wait for the pool, patches among them.
  { name: 'O_DIRECT with 4096-byte blocks, a tiny pool', img: { alignment: 4096 }, pooled: { limit: 16384, piece: 8192 } },
];

for (const v of variants) {
  describe(`BlkQueueEngine under random requests: ${v.name}`, () => {
    let dir: string;
    let file: string;
    let fd: number;
    let d: BlkTestDriver;
    let eng: BlkQueueEngine;

    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'kumo-blk-fuzz-'));
      file = join(dir, 'img');
      writeFileSync(file, randomBytes(SIZE));
      fd = openSync(file, 'r+');
      d = new BlkTestDriver(256, 16 << 20);
      const img: BlkEngineImage = { fd, size: SIZE, readonly: false, serial: Buffer.from('fuzz-serial\0\0\0\0\0\0\0\0\0'), flags: new Int32Array(IMAGE_FLAGS_LENGTH), ...v.img };
      if (v.writethrough) img.flags[0] = 1;
      eng = new BlkQueueEngine(img, { queueSize: 256, completion: v.completion ?? 'eventfd', pooled: v.pooled });
      eng.attach(d.device, d.mem);
    });
    afterEach(() => {
      eng.close();
      closeSync(fd);
      d.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('answers every chain, never throws, and never loses or invents acked data', () => {
      const rng = new Rng(fuzzSeed(0x626c6b21));
      const model = readFileSync(file);
      const known = new Uint8Array(SECTORS).fill(1);
      const slot = Array.from({ length: SLOTS }, () => ({ hdr: d.buf(32, 16), data: d.buf(DATA, 512), status: d.buf(8, 1), ranges: d.buf(16 * 8, 16) }));
      const statuses = new Map<number, number>();
      let reads = 0;

      for (let b = 0; b < BATCHES; b++) {
        const reqs: Req[] = [];
        const touched = new Uint8Array(SECTORS);
        for (let k = 0; k < 1 + rng.below(SLOTS); k++) {
          const s = slot[k];
          const type = rng.chance(0.9)
            ? rng.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
              VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES])
            : rng.u32();
          const len = rng.chance(0.9) ? 512 * (1 + rng.below(DATA / 512)) : rng.pick([0, 1, 511, 513, DATA]);
          const sector = rng.chance(0.9) ? rng.below(SECTORS) : rng.pick([SECTORS - 1, SECTORS, SECTORS + 7, 2 ** 40, 2 ** 52]);
          d.mem.write(s.hdr, encodeBlkHeader({ type, ioprio: 0, sector }));
          // Data in one to three pieces.
          const cut1 = rng.below(len + 1);
          const cut2 = cut1 + rng.below(len - cut1 + 1);
          const data = [{ addr: s.data, len: cut1 }, { addr: s.data + cut1, len: cut2 - cut1 }, { addr: s.data + cut2, len: len - cut2 }].filter((g) => g.len > 0);
          const readable: Segment[] = [{ addr: s.hdr, len: rng.chance(0.95) ? 16 : rng.pick([8, 15, 24]) }];
          const writable: Segment[] = [];
          const r: Req = { type, sector, writes: [], data, statusAddr: -1, payload: null };
          if (type === VIRTIO_BLK_T_OUT) {
            const payload = rng.bytes(len);
            d.mem.write(s.data, payload);
            r.payload = payload;
            readable.push(...data);
            r.writes.push([sector, Math.ceil(len / 512)]);
          } else if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
            const n = rng.chance(0.9) ? 1 + rng.below(3) : rng.pick([0, 8]);
            for (let j = 0; j < n; j++) {
              const seg = { sector: rng.below(SECTORS), numSectors: rng.chance(0.9) ? 1 + rng.below(64) : rng.pick([0, SECTORS, 0xffffffff]), flags: rng.chance(0.8) ? rng.below(2) : rng.u32() };
              d.mem.write(s.ranges + 16 * j, encodeBlkDiscardSegment(seg));
              r.writes.push([seg.sector, seg.numSectors]);
            }
            if (n > 0) readable.push({ addr: s.ranges, len: rng.chance(0.95) ? 16 * n : 16 * n - 1 });
          } else if (type === VIRTIO_BLK_T_GET_ID) {
            writable.push({ addr: s.data, len: rng.pick([20, 20, 10, 40]) });
          } else if (type !== VIRTIO_BLK_T_FLUSH) {
            writable.push(...data);
          }
          const statusLen = rng.chance(0.93) ? 1 : rng.pick([0, 2]);
          if (statusLen > 0) {
            d.mem.fill(s.status, statusLen, 0xff);
            writable.push({ addr: s.status, len: statusLen });
            r.statusAddr = s.status + statusLen - 1;
          }
          if (d.driver.add(readable, writable, k) === null) throw new Error('queue full');
          for (const [at, n] of inRange(r.writes)) for (let x = at; x < at + n; x++) touched[x]++;
          reqs.push(r);
        }

        d.driver.publish();
        eng.processAvail();
        const back = new Set(d.driver.takeUsed().map((u) => u.token));
        for (let i = 0; i < 200 && back.size < reqs.length; i++) {
          eng.drain();
          eng.processCompletions();
          for (const u of d.driver.takeUsed()) back.add(u.token);
        }
        expect(back.size, `batch ${b}: every chain comes back`).toBe(reqs.length);

        // Check reads against the model (sectors no write in this batch could have changed), then apply acked writes.
        reqs.forEach((r, k) => {
          const st = r.statusAddr >= 0 ? d.mem.readU8(r.statusAddr) : -1;
          if (st >= 0) {
            expect([VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, 0xff], `batch ${b} req ${k} type ${r.type}`).toContain(st);
            statuses.set(st, (statuses.get(st) ?? 0) + 1);
          }
          if (r.type !== VIRTIO_BLK_T_IN || st !== VIRTIO_BLK_S_OK) return;
          const got = Buffer.concat(r.data.map((g) => Buffer.from(d.mem.slice(g.addr, g.len))));
          for (let x = 0; x * 512 < got.length; x++) {
            const sec = r.sector + x;
            if (!known[sec] || touched[sec]) continue;
            reads++;
            const want = model.subarray(sec * 512, sec * 512 + Math.min(512, got.length - x * 512));
            expect(got.subarray(x * 512, x * 512 + want.length).equals(want), `batch ${b}: sector ${sec} read back wrong`).toBe(true);
          }
        });
        for (const r of reqs) {
          const st = r.statusAddr >= 0 ? d.mem.readU8(r.statusAddr) : -1;
          const alone = inRange(r.writes).every(([at, n]) => {
            for (let x = at; x < at + n; x++) if (touched[x] > 1) return false;
            return true;
          });
          // A range past the end is refused whole: its sectors stay known, so a clipped write would show.
          for (const [at, n] of inRange(r.writes)) {
            for (let x = at; x < at + n; x++) {
              // An acked OUT or WRITE_ZEROES that nothing else in the batch overlapped fixes the sector's contents.
              if (st === VIRTIO_BLK_S_OK && alone && r.type === VIRTIO_BLK_T_OUT && r.payload && (x - at + 1) * 512 <= r.payload.length) {
                r.payload.copy(model, x * 512, (x - at) * 512, (x - at + 1) * 512);
                known[x] = 1;
              } else if (st === VIRTIO_BLK_S_OK && alone && r.type === VIRTIO_BLK_T_WRITE_ZEROES) {
                model.fill(0, x * 512, (x + 1) * 512);
                known[x] = 1;
              } else {
                known[x] = 0;
              }
            }
          }
        }
      }

      expect(statSync(file).size).toBe(SIZE);
      const disk = readFileSync(file);
      let checked = 0;
      for (let x = 0; x < SECTORS; x++) {
        if (!known[x]) continue;
        checked++;
        expect(disk.subarray(x * 512, (x + 1) * 512).equals(model.subarray(x * 512, (x + 1) * 512)), `sector ${x} on disk`).toBe(true);
      }
      // The traffic did real work: reads were checked, and every status kind showed up.
      expect(reads).toBeGreaterThan(1000);
      expect(checked).toBeGreaterThan(SECTORS / 8);
      expect(statuses.get(VIRTIO_BLK_S_OK) ?? 0).toBeGreaterThan(0);
      expect(statuses.get(VIRTIO_BLK_S_IOERR) ?? 0).toBeGreaterThan(0);
      expect(statuses.get(VIRTIO_BLK_S_UNSUPP) ?? 0).toBeGreaterThan(0);
    }, 120_000);
  });
}

/** The [sector, count] ranges that lie inside the disk. */
function inRange(ranges: [number, number][]): [number, number][] {
  return ranges.filter(([at, n]) => n > 0 && at + n <= SECTORS);
}
