import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import {
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, startQsd, stopBackend, haveQsd } from './vu-client.js';

const SIZE = 8 << 20;

/** Deterministic PRNG so both back-ends see the same operations and data. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs the same 600 mixed requests (over 2 queues) and returns the statuses seen. */
function workload(c: BlkVuClient): number[] {
  const rand = rng(1234);
  const statuses: number[] = [];
  const data = c.buf(1 << 20, 4096);
  for (let i = 0; i < (1 << 20); i += 4) c.mem.writeU32(data + i, Math.floor(rand() * 0xffffffff));
  const scratch = c.buf(1 << 20, 4096);
  for (let round = 0; round < 20; round++) {
    for (let q = 0; q < 2; q++) {
      const sts: number[] = [];
      const n = 30;
      const used = new Set<number>();
      for (let k = 0; k < n; k++) {
        const kind = rand();
        // Requests in one batch touch disjoint 64 KiB areas so completion order cannot matter.
        let area: number;
        do area = Math.floor(rand() * (SIZE / 65536)); while (used.has(area));
        used.add(area);
        const sector = area * 128 + Math.floor(rand() * 64);
        const secs = 1 + Math.floor(rand() * 63);
        if (kind < 0.55) {
          const segs = [];
          let left = secs * 512;
          let off = Math.floor(rand() * 1000) * 512;
          while (left > 0) {
            const l = Math.min(left, 512 * (1 + Math.floor(rand() * 8)));
            segs.push({ addr: data + off, len: l });
            off = (off + l + 512 * Math.floor(rand() * 4)) % ((1 << 20) - 65536);
            left -= l;
          }
          sts.push(c.add(q, VIRTIO_BLK_T_OUT, sector, segs, [], k));
        } else if (kind < 0.7) {
          sts.push(c.add(q, VIRTIO_BLK_T_IN, sector, [], [{ addr: scratch + k * 32768, len: secs * 512 }], k));
        } else if (kind < 0.8) {
          sts.push(c.add(q, VIRTIO_BLK_T_DISCARD, 0, [c.ranges([{ sector: area * 128, numSectors: 8 * (1 + Math.floor(rand() * 8)), flags: 0 }])], [], k));
        } else if (kind < 0.9) {
          const unmap = rand() < 0.5 ? 1 : 0;
          sts.push(c.add(q, VIRTIO_BLK_T_WRITE_ZEROES, 0, [c.ranges([{ sector, numSectors: secs, flags: unmap }])], [], k));
        } else {
          sts.push(c.add(q, VIRTIO_BLK_T_FLUSH, 0, [], [], k));
        }
      }
      c.run(q, n);
      for (const s of sts) statuses.push(c.mem.readU8(s));
    }
  }
  return statuses;
}

/** Both back-ends serve a copy of `seed` (start() returns each one's image path and process); returns [kumo, qsd] results. */
async function compare(seed: Buffer, dir: string, start: (which: 'kumo' | 'qsd', img: string, sock: string) => Promise<{ child: ChildProcess; read: () => Buffer }>, imgOf: (which: 'kumo' | 'qsd') => string): Promise<{ file: Buffer; statuses: number[] }[]> {
  const results: { file: Buffer; statuses: number[] }[] = [];
  for (const which of ['kumo', 'qsd'] as const) {
    const img = imgOf(which);
    const sock = join(dir, `${which}.sock`);
    let started: { child: ChildProcess; read: () => Buffer } | null = null;
    let c: BlkVuClient | null = null;
    let statuses: number[] = [];
    try {
      started = await start(which, img, sock);
      c = await BlkVuClient.connect(sock, { numQueues: 2, queueSize: 128, memSize: 256 << 20 });
      statuses = workload(c);
    } finally {
      c?.close();
      if (started) await stopBackend(started.child);
    }
    results.push({ file: (started as { read: () => Buffer }).read(), statuses });
  }
  return results;
}

function expectSame(results: { file: Buffer; statuses: number[] }[], seed: Buffer): void {
  const [k, q] = results;
  expect(k.statuses.every((s) => s === 0)).toBe(true);
  expect(k.statuses).toEqual(q.statuses);
  expect(k.file.length).toBe(q.file.length);
  expect(k.file.equals(seed)).toBe(false);
  let firstDiff = -1;
  for (let i = 0; i < k.file.length; i++) if (k.file[i] !== q.file[i]) { firstDiff = i; break; }
  expect(firstDiff).toBe(-1);
}

function seedImage(): Buffer {
  const seed = Buffer.alloc(SIZE);
  const r = rng(99);
  for (let i = 0; i < SIZE; i += 4) seed.writeUInt32LE(Math.floor(r() * 0xffffffff), i);
  return seed;
}

const canLoop = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0 && existsSync('/dev/loop-control');

describe.skipIf(!haveQsd())('same data on disk as qemu-storage-daemon', () => {
  it('runs an identical op sequence against both and compares the images byte for byte', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-qsd-'));
    const seed = seedImage();
    try {
      const results = await compare(seed, dir, async (which, img, sock) => {
        writeFileSync(img, seed);
        const child = which === 'kumo'
          ? await startBackend(`path=${img},socket=${sock},num_queues=2,queue_size=128`)
          : await startQsd(img, sock, 2);
        return { child, read: () => readFileSync(img) };
      }, (which) => join(dir, `${which}.raw`));
      expectSame(results, seed);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  if (!canLoop) console.log('not root or no losetup/loop devices: the 4096-byte sector device comparison is skipped');
  it.skipIf(!canLoop)('the same on 4096-byte-sector block devices with direct I/O (sectors patched into blocks, ragged zeroing)', async () => {
    const dir = mkdtempSync(join(existsSync('/var/tmp') ? '/var/tmp' : tmpdir(), 'kumo-qsd-4k-'));
    const seed = seedImage();
    const loops: string[] = [];
    try {
      const results = await compare(seed, dir, async (which, backing, sock) => {
        writeFileSync(backing, seed);
        const r = spawnSync('losetup', ['-f', '--show', '--sector-size', '4096', backing], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`losetup: ${r.stderr}`);
        const dev = r.stdout.trim();
        loops.push(dev);
        const child = which === 'kumo'
          ? await startBackend(`path=${dev},socket=${sock},num_queues=2,queue_size=128,direct=on`)
          : await startQsd(dev, sock, 2, { direct: true, blockDevice: true });
        return { child, read: () => readFileSync(backing) };
      }, (which) => join(dir, `${which}.raw`));
      expectSame(results, seed);
    } finally {
      for (const l of loops) spawnSync('losetup', ['-d', l]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
