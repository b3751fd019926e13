// The direct=on helpers: PooledIo and DirectZeroes against a model of the file (ranges that start and end
// anywhere on 512-byte sectors, guest buffers split at odd addresses, requests many pieces long, several at
// once with some parked for the pool, a file whose end lies inside a block; a plain file stands in for the
// O_DIRECT one, since the classes only keep to the alignment), the write gate's stripes, and the buffer pool.
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BouncePool, DirectZeroes, IMAGE_FLAGS_LENGTH, STRIPES, WriteGate, WRITEBACK_FAILED } from '../../backends/vhost-user-blk/bounce.js';

/** Where the WriteGate starts in the image flags: its locks, then its counts. */
const GATE = WRITEBACK_FAILED + 1;
import { PooledIo, POOLED_PENDING } from '../../backends/vhost-user-blk/pooled.js';
import { IoUring } from '../../protocol/sys/uring.js';
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

/**
 * Drives PooledIo as the queue engine does: a ring, the gate's progress reaping it (never resuming parked
 * requests inside a wait), and resume() after each top-level reap.
 */
class PooledHarness {
  readonly ring = new IoUring(64, { cqEntries: 256 });
  readonly flags = new Int32Array(new SharedArrayBuffer(IMAGE_FLAGS_LENGTH * 4));
  readonly io: PooledIo;
  inFlight = 0;
  /** Slot -> result (0 ok, 1 failed) of each finished request. */
  readonly done = new Map<number, number>();
  private readonly onCqe = (ud: number, res: number): void => {
    this.inFlight--;
    const slot = ud & 0xffff;
    const r = this.io.complete(slot, (ud >>> 16) & 0x3fff, res);
    if (r !== POOLED_PENDING) this.done.set(slot, r);
  };

  constructor(fd: number, end: number, mem: GuestMemory, piece: number, poolLimit: number) {
    const progress = (): boolean => {
      if (this.inFlight === 0) return false;
      this.ring.submit(1);
      this.ring.reap(this.onCqe);
      return true;
    };
    this.io = new PooledIo({
      ring: this.ring, fd, end, gate: new WriteGate(this.flags), progress, mem: () => mem,
      ensureSq: (k) => {
        while (this.ring.sqSpace() < k) progress();
      },
      started: (n) => {
        this.inFlight += n;
      },
      cancelled: () => {},
    }, ALIGN, 64, piece, poolLimit);
  }

  /** Runs until every started request finished. */
  settle(): void {
    for (;;) {
      this.ring.reap(this.onCqe);
      this.io.resume();
      if (this.ring.pending > 0) this.ring.submit(0);
      if (this.inFlight === 0) break;
      this.ring.submit(1);
    }
    expect(this.io.parked).toBe(0);
  }

  close(): void {
    this.io.free();
    this.ring.close();
  }
}

describe('PooledIo', () => {
  it('reads and writes any sector ranges, many at once, through small pieces of a small pool exactly as the model says', () => {
    const seed = fuzzSeed(4242);
    const rng = new Rng(seed);
    const model = rng.bytes(SIZE);
    const path = join(dir, 'img.raw');
    writeFileSync(path, model);
    const fd = openSync(path, 'r+');
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 16 << 20 }]);
    // 8 KiB pieces, 16 KiB of buffers: a request takes up to 8 KiB, so the third at once is parked.
    const h = new PooledHarness(fd, SIZE, mem, CHUNK, 2 * CHUNK);
    let parkedSeen = 0;
    let multiPiece = 0;
    try {
      /** `len` bytes of guest memory in 1-4 segments at odd addresses from `at` on, a `skip`-byte header before them. */
      const segments = (len: number, skip: number, at: number): Segment[] => {
        const cuts = [0, ...Array.from({ length: rng.below(4) }, () => rng.below(len + 1)), len].sort((x, y) => x - y);
        const segs: Segment[] = skip > 0 ? [{ addr: at, len: skip }] : [];
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
      const sectors = SIZE / SECTOR;
      const zeroes = new DirectZeroes(fd, ALIGN, SIZE);
      for (let round = 0; round < 600; round++) {
        // Up to 6 requests at once on block ranges that do not overlap (their order is the guest's own business).
        const taken: [number, number][] = [];
        const reqs: { slot: number; write: boolean; segs: Segment[]; skip: number; offset: number; len: number; data?: Buffer }[] = [];
        const count = 1 + rng.below(6);
        for (let slot = 0; slot < count; slot++) {
          const first = rng.below(sectors);
          const n = 1 + rng.below(Math.min(sectors - first, rng.below(4) === 0 ? sectors : 12));
          const offset = first * SECTOR;
          const len = n * SECTOR;
          const lo = Math.floor(offset / ALIGN);
          const hi = Math.ceil((offset + len) / ALIGN);
          if (taken.some(([a, b]) => lo < b && a < hi)) continue;
          taken.push([lo, hi]);
          const skip = rng.below(2) === 0 ? 16 : 0;
          const segs = segments(len, skip, slot * (1 << 20));
          const write = rng.below(2) === 0;
          const req = { slot, write, segs, skip, offset, len, data: write ? rng.bytes(len) : undefined };
          if (req.data !== undefined) pieces(segs, skip, (addr, pos, k) => mem.write(addr, req.data!.subarray(pos, pos + k)));
          reqs.push(req);
          if (hi - lo > CHUNK / ALIGN) multiPiece++;
        }
        const before = Buffer.from(model);
        for (const r of reqs) h.io.start(r.slot, r.segs, r.skip, r.offset, r.len, r.write);
        parkedSeen = Math.max(parkedSeen, h.io.parked);
        h.settle();
        for (const r of reqs) {
          const what = `round ${round} slot ${r.slot} ${r.write ? 'write' : 'read'} ${r.offset}+${r.len} seed ${seed}`;
          expect(h.done.get(r.slot), what).toBe(0);
          if (r.data !== undefined) r.data.copy(model, r.offset);
          else expect(bytesOf(r.segs, r.skip, r.len).equals(before.subarray(r.offset, r.offset + r.len)), what).toBe(true);
        }
        h.done.clear();
        if (rng.below(8) === 0) {
          // A partial block's WRITE_ZEROES, as the engine sends it for a block device.
          const off = rng.below(sectors) * SECTOR;
          const len = Math.min(SIZE - off, (1 + rng.below(7)) * SECTOR, ALIGN - (off % ALIGN));
          expect(zeroes.zero(off, len)).toBe(len);
          model.fill(0, off, off + len);
        }
        expect(fstatSync(fd).size, `round ${round} seed ${seed}`).toBe(SIZE);
        expect(Array.from(h.flags.subarray(2)), 'the gate is left as it was found').toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));
      }
      zeroes.free();
    } finally {
      h.close();
      mem.close();
      closeSync(fd);
    }
    expect(parkedSeen, 'requests waited for the pool').toBeGreaterThan(0);
    expect(multiPiece, 'requests went in several pieces').toBeGreaterThan(50);
    expect(readFileSync(path).equals(model), `seed ${seed}`).toBe(true);
  });
});

/** An image of SIZE bytes (its end inside a block), a pooled harness and a DirectZeroes on it: what `f` tests. */
function withTailImage(f: (t: { path: string; fd: number; mem: GuestMemory; h: PooledHarness; zeroes: DirectZeroes }) => void): void {
  const path = join(dir, 'tail.raw');
  writeFileSync(path, randomBytes(SIZE));
  const fd = openSync(path, 'r+');
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
  const h = new PooledHarness(fd, SIZE, mem, CHUNK, 2 * CHUNK);
  const zeroes = new DirectZeroes(fd, ALIGN, SIZE);
  try {
    mem.write(0x1001, Buffer.alloc(SECTOR, 0x77));
    f({ path, fd, mem, h, zeroes });
  } finally {
    zeroes.free();
    h.close();
    mem.close();
    closeSync(fd);
  }
}

describe('the tail block of a file whose end lies inside it', () => {
  const tail = SIZE - SECTOR;
  /** A pooled write of the last sector (slot), then a DirectZeroes of the one before it. */
  const writeTail = (h: PooledHarness, zeroes: DirectZeroes, slot: number): void => {
    h.io.start(slot, [{ addr: 0x1001, len: SECTOR }], 0, tail, SECTOR, true);
    h.settle();
    expect(h.done.get(slot)).toBe(0);
    expect(zeroes.zero(tail - SECTOR, SECTOR)).toBe(SECTOR);
  };

  it('is cut back after a write that grew the file, and not when someone else grew the file since', () => {
    withTailImage(({ path, fd, h, zeroes }) => {
      writeTail(h, zeroes, 0);
      expect(fstatSync(fd).size, 'the block was written whole, and the file cut back to its size').toBe(SIZE);
      // Someone else grows the image (truncate -s, a tool appending) and writes there.
      const grown = SIZE + 4 * ALIGN;
      const theirs = Buffer.from('data appended by someone else');
      const writeAt = SIZE + ALIGN;
      truncateSync(path, grown);
      const other = openSync(path, 'r+');
      writeSync(other, theirs, 0, theirs.length, writeAt);
      closeSync(other);
      writeTail(h, zeroes, 1);
      expect(fstatSync(fd).size, 'a file grown by someone else keeps its size').toBe(grown);
      expect(readFileSync(path).subarray(writeAt, writeAt + theirs.length).equals(theirs), 'and their data').toBe(true);
    });
  });

  it('keeps the bytes someone else appended inside that block', () => {
    withTailImage(({ path, fd, h, zeroes }) => {
      // A tool appends 100 bytes: the file now ends at SIZE + 100, still inside the last block.
      const theirs = Buffer.alloc(100, 0x5a);
      const other = openSync(path, 'a');
      writeSync(other, theirs);
      closeSync(other);
      writeTail(h, zeroes, 0);
      expect(fstatSync(fd).size, 'appended bytes kept').toBe(SIZE + 100);
      expect(readFileSync(path).subarray(SIZE, SIZE + 100).equals(theirs)).toBe(true);
    });
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

describe('PooledIo with guest memory gone', () => {
  it('fails the request, leaves the file and the gate as they were, and gives the buffer back', () => {
    const data = randomBytes(SIZE);
    const path = join(dir, 'img.raw');
    writeFileSync(path, data);
    const fd = openSync(path, 'r+');
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
    const h = new PooledHarness(fd, SIZE, mem, CHUNK, CHUNK);
    try {
      const gone: Segment[] = [{ addr: (1 << 20) + 4096, len: 3 * ALIGN }];
      // A write on whole blocks (copied in before its write), a patch (copied in after its reads), and a read.
      h.io.start(0, gone, 0, 2 * ALIGN, 3 * ALIGN, true);
      h.settle();
      h.io.start(1, [{ addr: (1 << 20) - 512, len: 1024 }], 0, ALIGN + 512, 1024, true);
      h.settle();
      h.io.start(2, gone, 0, 2 * ALIGN + 512, 3 * ALIGN, false);
      h.settle();
      expect([h.done.get(0), h.done.get(1), h.done.get(2)]).toEqual([1, 1, 1]);
      expect(Array.from(h.flags.subarray(2))).toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));
      // The pool (one piece's worth) has its buffer back: a good request runs.
      const ok: Segment[] = [{ addr: 4096 + 16, len: ALIGN }];
      h.io.start(3, ok, 0, 0, ALIGN, false);
      h.settle();
      expect(h.done.get(3)).toBe(0);
      expect(Buffer.from(mem.slice(4096 + 16, ALIGN)).equals(data.subarray(0, ALIGN))).toBe(true);
    } finally {
      h.close();
      mem.close();
      closeSync(fd);
    }
    expect(readFileSync(path).equals(data)).toBe(true);
  });
});

describe('WriteGate', () => {
  const KiB64 = 64 * 1024;
  it('maps a range to the stripes of the 64 KiB regions it touches, in the order they are taken', () => {
    expect(WriteGate.list(WriteGate.stripes(0, 512))).toEqual([0]);
    expect(WriteGate.list(WriteGate.stripes(KiB64 - 512, 512))).toEqual([0]);
    expect(WriteGate.list(WriteGate.stripes(KiB64 - 512, 1024))).toEqual([0, 1]);
    expect(WriteGate.list(WriteGate.stripes(5 * KiB64, 4096))).toEqual([5]);
    expect(WriteGate.list(WriteGate.stripes(7 * KiB64, 0))).toEqual([7]);
    expect(WriteGate.list(WriteGate.stripes(3 * KiB64 + 4096, MiB))).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    // Regions wrap around the stripes; a run that wraps is taken from stripe 0 up.
    expect(WriteGate.list(WriteGate.stripes((STRIPES + 1) * KiB64, 4096))).toEqual([1]);
    expect(WriteGate.list(WriteGate.stripes((STRIPES - 2) * KiB64 + 4096, 3 * KiB64))).toEqual([0, 1, STRIPES - 2, STRIPES - 1]);
    const all = WriteGate.list(WriteGate.stripes(0, STRIPES * KiB64));
    expect(all).toEqual(Array.from({ length: STRIPES }, (_, i) => i));
    expect(WriteGate.list(WriteGate.stripes(12345 * 512, 2 * STRIPES * KiB64))).toEqual(all);
    // A patch whose block reaches past the file's end takes every stripe (it cuts the file back).
    expect(WriteGate.list(WriteGate.stripesFor(MiB - 512, 512, true, 4096, MiB - 1024))).toEqual(all);
    expect(WriteGate.list(WriteGate.stripesFor(MiB - 512, 512, false, 4096, MiB - 1024))).toEqual([15]);
  });

  it('lets a patch run beside a write in another stripe and makes it wait for one in its own', () => {
    const flags = new Int32Array(new SharedArrayBuffer(IMAGE_FLAGS_LENGTH * 4));
    const gate = new WriteGate(flags);
    const a = WriteGate.stripes(3 * KiB64, 4096);
    const b = WriteGate.stripes(9 * KiB64, 4096);
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

    // While the patch holds a, a write spanning stripes 3 to 9 steps back out of the ones it entered and waits for the lock.
    const span = WriteGate.stripes(3 * KiB64, 7 * KiB64);
    const waits = progressOr(() => {
      expect(Array.from(flags.subarray(GATE + STRIPES + 3, GATE + STRIPES + 10))).toEqual([0, 0, 0, 0, 0, 0, 1]);
      gate.unlock(a);
      return true;
    });
    gate.enter(span, waits.progress);
    expect(waits.calls()).toBe(1);
    expect(Array.from(flags.subarray(GATE + STRIPES + 3, GATE + STRIPES + 10))).toEqual([1, 1, 1, 1, 1, 1, 2]);
    gate.leave(span);
    gate.leave(b);
    expect(Array.from(flags.subarray(2))).toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));

    // Every stripe, the last included: a write in the last one holds back a patch over all of them.
    const all = WriteGate.stripes(0, STRIPES * KiB64);
    const last = WriteGate.stripes((STRIPES - 1) * KiB64, 4096);
    const rest = WriteGate.stripes(0, (STRIPES - 1) * KiB64);
    gate.enter(all, never.progress);
    expect(Array.from(flags.subarray(GATE + STRIPES))).toEqual(new Array(STRIPES).fill(1));
    gate.leave(rest);
    const lastDone = progressOr(() => {
      gate.leave(last);
      return true;
    });
    gate.lock(all, lastDone.progress);
    expect(lastDone.calls()).toBe(1);
    expect(Array.from(flags.subarray(GATE, GATE + STRIPES))).toEqual(new Array(STRIPES).fill(1));
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
    expect(() => pool.take(64 * 1024 + 1)).toThrow(RangeError); // larger than the whole pool
    const c = pool.take(32 * 1024);
    expect(c?.size).toBe(32 * 1024);
    expect(pool.take(32 * 1024)).toBeNull(); // 4 + 8 + 32 KiB held: another 32 would pass 64
    pool.give(c!);
    expect(pool.take(20 * 1024)).toBe(c); // the same size class comes back
    pool.give(a!);
    pool.give(b!);
    pool.give(c!);
    // At the limit, idle buffers of other sizes make room (nothing in use could otherwise free it).
    const big = pool.take(64 * 1024);
    expect(big?.size).toBe(64 * 1024);
    expect(pool.take(4096)).toBeNull();
    pool.give(big!);
    expect(pool.take(4096)?.size).toBe(4096);
    pool.free();
  });
});
