// bounce.ts, the direct=on helpers: DirectBounce's arithmetic against a model of the file (ranges that start
// and end anywhere on 512-byte sectors, guest buffers split at odd addresses, requests many chunks long, a
// file whose end lies inside a block; a plain file stands in for the O_DIRECT one, since the class only
// keeps to the alignment), the write gate's stripes, and the aligned-buffer pool.
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BouncePool, DirectBounce, IMAGE_FLAGS_LENGTH, WriteGate } from '../../backends/vhost-user-blk/bounce.js';
import { GuestMemory } from '../../protocol/memory/index.js';
import type { Segment } from '../../protocol/virtqueue/index.js';
import { fuzzSeed, Rng } from '../fuzz-rng.js';

const ALIGN = 4096;
const CHUNK = 2 * ALIGN;
const SIZE = 40 * ALIGN + 1536; // the last block is partly past the end
const SECTOR = 512;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kumo-bounce-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('DirectBounce', () => {
  it('reads, writes and zeroes any sector range through a small buffer exactly as the model says', () => {
    const seed = fuzzSeed(4242);
    const rng = new Rng(seed);
    const model = rng.bytes(SIZE);
    const path = join(dir, 'img.raw');
    writeFileSync(path, model);
    const fd = openSync(path, 'r+');
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 4 << 20 }]);
    const b = new DirectBounce(fd, ALIGN, SIZE, CHUNK);
    try {
      /** `len` bytes of guest memory in 1-4 segments at odd addresses, with a `skip`-byte header before them. */
      const segments = (len: number, skip: number): Segment[] => {
        const cuts = [0, ...Array.from({ length: rng.below(4) }, () => rng.below(len + 1)), len].sort((x, y) => x - y);
        const segs: Segment[] = skip > 0 ? [{ addr: 0, len: skip }] : [];
        let at = 64 * 1024;
        for (let i = 1; i < cuts.length; i++) {
          at += 1 + rng.below(4096);
          segs.push({ addr: at, len: cuts[i] - cuts[i - 1] });
          at += cuts[i] - cuts[i - 1];
        }
        return segs.filter((s) => s.len > 0);
      };
      /** Calls `f` for each piece of guest memory the segments hold after `skip` bytes, with its place in the data. */
      const pieces = (segs: Segment[], skip: number, f: (addr: number, pos: number, len: number) => void): void => {
        let pos = 0;
        let left = skip;
        for (const s of segs) {
          const k = Math.min(left, s.len);
          left -= k;
          if (s.len > k) f(s.addr + k, pos, s.len - k);
          pos += s.len - k;
        }
      };
      const bytesOf = (segs: Segment[], skip: number, len: number): Buffer => {
        const out = Buffer.alloc(len);
        pieces(segs, skip, (addr, pos, n) => mem.read(addr, out.subarray(pos, pos + n)));
        return out;
      };
      for (let op = 0; op < 3000; op++) {
        const sectors = SIZE / SECTOR;
        const first = rng.below(sectors);
        const n = 1 + rng.below(Math.min(sectors - first, rng.below(4) === 0 ? sectors : 12));
        const offset = first * SECTOR;
        const len = n * SECTOR;
        const skip = rng.below(2) === 0 ? 16 : 0;
        const kind = rng.below(3);
        if (kind === 0) {
          const segs = segments(len, skip);
          expect(b.read(mem, segs, skip, offset, len), `op ${op} seed ${seed}`).toBe(len);
          expect(bytesOf(segs, skip, len).equals(model.subarray(offset, offset + len)), `read op ${op} seed ${seed}`).toBe(true);
        } else if (kind === 1) {
          const segs = segments(len, skip);
          const data = rng.bytes(len);
          pieces(segs, skip, (addr, pos, n) => mem.write(addr, data.subarray(pos, pos + n)));
          expect(b.write(mem, segs, skip, offset, len), `op ${op} seed ${seed}`).toBe(len);
          data.copy(model, offset);
        } else {
          expect(b.zero(offset, len), `op ${op} seed ${seed}`).toBe(len);
          model.fill(0, offset, offset + len);
        }
        expect(fstatSync(fd).size, `op ${op} seed ${seed}`).toBe(SIZE);
      }
    } finally {
      b.free();
      mem.close();
      closeSync(fd);
    }
    expect(readFileSync(path).equals(model), `seed ${seed}`).toBe(true);
  });
});

const MiB = 1 << 20;

/** A progress callback that fails the test instead of letting a wait spin forever. */
function progressOr(onCall: () => boolean, limit = 5): { progress: () => boolean; calls: () => number } {
  let n = 0;
  return {
    progress: () => {
      if (++n > limit) throw new Error('the gate kept waiting');
      return onCall();
    },
    calls: () => n,
  };
}

describe('WriteGate', () => {
  it('maps a range to the stripes of the 1 MiB regions it touches', () => {
    expect(WriteGate.stripes(0, 512)).toBe(1);
    expect(WriteGate.stripes(MiB - 512, 512)).toBe(1);
    expect(WriteGate.stripes(MiB - 512, 1024)).toBe(0b11);
    expect(WriteGate.stripes(5 * MiB, 4096)).toBe(1 << 5);
    // Regions wrap around the 32 stripes.
    expect(WriteGate.stripes(33 * MiB, 4096)).toBe(1 << 1);
    expect(WriteGate.stripes(31 * MiB + 4096, MiB)).toBe((2 ** 31 + 1) >>> 0);
    expect(WriteGate.stripes(0, 64 * MiB)).toBe(0xffffffff);
    expect(WriteGate.stripes(7 * MiB, 0)).toBe(1 << 7);
  });

  it('lets a patch run beside a write in another stripe and makes it wait for one in its own', () => {
    const flags = new Int32Array(new SharedArrayBuffer(IMAGE_FLAGS_LENGTH * 4));
    const gate = new WriteGate(flags);
    const a = WriteGate.stripes(3 * MiB, 4096);
    const b = WriteGate.stripes(9 * MiB, 4096);
    const never = progressOr(() => true, 0);
    gate.enter(b, never.progress);

    // A patch in stripe a: the write in b is no reason to wait.
    gate.lock(a, never.progress);
    expect(never.calls()).toBe(0);
    gate.unlock(a);

    // A write in a, then a patch there: it waits until that write completes (progress completes it).
    gate.enter(a, never.progress);
    const done = progressOr(() => {
      gate.leave(a);
      return true;
    });
    gate.lock(a, done.progress);
    expect(done.calls()).toBe(1);

    // While the patch holds a, a write spanning a and b steps back out of both and waits for the lock.
    const span = a | b;
    const waits = progressOr(() => {
      gate.unlock(a);
      return true;
    });
    gate.enter(span, waits.progress);
    expect(waits.calls()).toBe(1);
    gate.leave(span);
    gate.leave(b);
    expect(Array.from(flags.subarray(2))).toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));

    // Every stripe, the 32nd included: a write in the last one holds back a patch there.
    const all = WriteGate.stripes(0, 64 * MiB);
    const last = WriteGate.stripes(31 * MiB, 4096);
    gate.enter(all, never.progress);
    expect(Array.from(flags.subarray(2 + 32))).toEqual(new Array(32).fill(1));
    gate.leave(all & ~last);
    const lastDone = progressOr(() => {
      gate.leave(last);
      return true;
    });
    gate.lock(all, lastDone.progress);
    expect(lastDone.calls()).toBe(1);
    expect(Array.from(flags.subarray(2, 2 + 32))).toEqual(new Array(32).fill(1));
    gate.unlock(all);
    expect(Array.from(flags.subarray(2))).toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));
  });
});

describe('BouncePool', () => {
  it('hands out page-aligned power-of-two buffers, reuses them, and stops at its limit', () => {
    const pool = new BouncePool(64 * 1024);
    const a = pool.take(512);
    const b = pool.take(5000);
    expect(a?.size).toBe(4096);
    expect(b?.size).toBe(8192);
    expect(Number(a?.ptr) % 4096).toBe(0);
    expect(pool.take((1 << 20) + 1)).toBeNull(); // larger than any pooled request
    const c = pool.take(32 * 1024);
    expect(c?.size).toBe(32 * 1024);
    expect(pool.take(32 * 1024)).toBeNull(); // 4 + 8 + 32 KiB held: another 32 would pass 64
    pool.give(c!);
    expect(pool.take(20 * 1024)).toBe(c); // the same size class comes back
    pool.give(a!);
    pool.give(b!);
    pool.give(c!);
    pool.free();
  });
});
