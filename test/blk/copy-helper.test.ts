import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync, openSync, closeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { BlkQueueEngine, type BlkEngineImage } from '../../backends/vhost-user-blk/engine.js';
import { IMAGE_FLAGS_LENGTH } from '../../backends/vhost-user-blk/bounce.js';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_S_OK } from '../../protocol/virtio/index.js';
import { closeQuiet, eventfd, eventfdRead } from '../../protocol/sys/fd.js';
import { BlkTestDriver } from './harness.js';

const SIZE = 64 << 20;
const SPARE_CPU = availableParallelism() >= 2;
if (!SPARE_CPU) console.log('blk copy helper: skipped, one CPU (the helper runs only with a CPU to spare)');

/** Requests in flight at once, as `kumo-vu blk bench --iodepth 32` keeps them. */
const BATCH = 32;

/** Until every request of a batch came back: the engine's own steps only (no drain), as its worker runs it. */
async function serveBatch(d: BlkTestDriver, eng: BlkQueueEngine, efd: number, n: number): Promise<number> {
  d.driver.publish();
  eng.processAvail();
  let back = d.driver.takeUsed().length;
  const end = Date.now() + 10_000;
  while (back < n) {
    if (Date.now() > end) throw new Error(`${back} of ${n} requests came back`);
    if (eventfdRead(efd) > 0) eng.processCompletions();
    else await new Promise((r) => setTimeout(r, 1));
    back += d.driver.takeUsed().length;
  }
  return back;
}

/** An image file of random bytes served by one engine with a copy helper, and a driver for it. */
class Fixture {
  readonly dir: string;
  readonly file: string;
  readonly fd: number;
  readonly efd: number;
  readonly initial: Buffer;
  readonly d: BlkTestDriver;
  readonly eng: BlkQueueEngine;

  /**
   * `memoryBacked`: the image lies on tmpfs (/dev/shm) and the engine is told so; else on a disk file system, whose
   * pages can be dropped, or in `base`.
   */
  constructor(memoryBacked: boolean, base = memoryBacked ? '/dev/shm' : existsSync('/var/tmp') ? '/var/tmp' : tmpdir()) {
    this.dir = mkdtempSync(join(base, 'kumo-blk-helper-'));
    this.file = join(this.dir, 'img');
    this.initial = randomBytes(SIZE);
    writeFileSync(this.file, this.initial);
    this.fd = openSync(this.file, 'r+');
    this.efd = eventfd();
    this.d = new BlkTestDriver(512, 128 << 20);
    const img: BlkEngineImage = { fd: this.fd, size: SIZE, readonly: false, memoryBacked, serial: new Uint8Array(20), flags: new Int32Array(IMAGE_FLAGS_LENGTH) };
    this.eng = new BlkQueueEngine(img, { queueSize: 512, completion: 'eventfd', wakeFd: this.efd });
    this.eng.ring.registerEventfd(this.efd); // as the queue worker does: reads from a disk complete through the ring
    this.eng.attach(this.d.device, this.d.mem);
  }

  serve(n: number): Promise<number> {
    return serveBatch(this.d, this.eng, this.efd, n);
  }

  close(): void {
    this.eng.close();
    closeQuiet(this.efd);
    closeSync(this.fd);
    this.d.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

describe.skipIf(!SPARE_CPU)('BlkQueueEngine copy helper (tmpfs image, a CPU to spare)', () => {
  let f: Fixture;
  beforeEach(() => (f = new Fixture(true)));
  afterEach(() => f.close());

  const serve = (n: number): Promise<number> => f.serve(n);

  /** BATCH 4k requests (even k: write random data at sector 8k, odd k: read sector 8k); returns what to check. */
  const batch = (round: number) =>
    Array.from({ length: BATCH }, (_, k) => {
      const sector = 8 * (round * BATCH + k);
      const addr = f.d.buf(4096);
      if (k % 2 === 0) {
        const data = randomBytes(4096);
        f.d.mem.write(addr, data);
        return { sector, addr, data, write: true, st: f.d.add(VIRTIO_BLK_T_OUT, sector, [{ addr, len: 4096 }], [], round * BATCH + k) };
      }
      return { sector, addr, data: f.initial.subarray(sector * 512, sector * 512 + 4096), write: false, st: f.d.add(VIRTIO_BLK_T_IN, sector, [], [{ addr, len: 4096 }], round * BATCH + k) };
    });


  it('copies on its own thread while other requests wait, with the data inline copies give; results wake the queue thread', async () => {
    // The helper's thread starts on first use and copies once it runs; until then this thread copies.
    let round = 0;
    const reqs = [];
    const end = Date.now() + 20_000;
    do {
      if (Date.now() > end) throw new Error('the copy helper never took a copy');
      reqs.push(...batch(round++));
      await serve(BATCH);
      await new Promise((r) => setTimeout(r, 25));
    } while (f.eng.helperCopies === 0);
    const before = f.eng.helperCopies;
    for (let k = 0; k < 3; k++) {
      reqs.push(...batch(round++));
      await serve(BATCH);
    }
    expect(f.eng.helperCopies - before).toBeGreaterThan(BATCH); // most of the last 96
    const disk = readFileSync(f.file);
    for (const r of reqs) {
      expect(f.d.mem.readU8(r.st)).toBe(VIRTIO_BLK_S_OK);
      expect(disk.subarray(r.sector * 512, r.sector * 512 + 4096).equals(r.data)).toBe(true);
      if (!r.write) expect(Buffer.from(f.d.mem.slice(r.addr, 4096)).equals(r.data)).toBe(true);
    }
  });

  it('a lone request is copied by the queue thread; a ring stop waits for the helper copies in flight', async () => {
    const end = Date.now() + 20_000;
    let round = 0;
    do {
      if (Date.now() > end) throw new Error('the copy helper never took a copy');
      batch(round++);
      await serve(BATCH);
      await new Promise((r) => setTimeout(r, 25));
    } while (f.eng.helperCopies === 0);
    const helped = f.eng.helperCopies;
    const inline = f.eng.inlineCopies;
    const lone = f.d.buf(4096);
    f.d.add(VIRTIO_BLK_T_IN, 0, [], [{ addr: lone, len: 4096 }], 9999);
    await serve(1);
    expect([f.eng.helperCopies - helped, f.eng.inlineCopies - inline]).toEqual([0, 1]);

    // 128 reads of 60 KiB (still below the size io-wq would take). The helper may finish its share before
    // processAvail() reaps (a loaded host runs the two threads in turn): rounds go on until a ring stop found copies
    // still in flight, and every round's data is checked.
    const disk = readFileSync(f.file); // the earlier batches wrote here too
    const bufs = Array.from({ length: 128 }, () => f.d.buf(61440));
    let caught = 0;
    for (let round = 0; round < 50 && caught === 0; round++) {
      const big = bufs.map((addr, k) => {
        f.d.mem.fill(addr, 61440, 0xaa);
        return { addr, k, st: f.d.add(VIRTIO_BLK_T_IN, 120 * k, [], [{ addr, len: 61440 }], 20000 + round * 128 + k) };
      });
      f.d.driver.publish();
      f.eng.processAvail();
      if (f.eng.inFlight > 0) caught++;
      f.eng.detach();
      expect(f.eng.inFlight).toBe(0);
      expect(f.d.driver.takeUsed().length).toBe(128);
      for (const r of big) {
        expect(f.d.mem.readU8(r.st)).toBe(VIRTIO_BLK_S_OK);
        expect(Buffer.from(f.d.mem.slice(r.addr, 61440)).equals(disk.subarray(r.k * 61440, (r.k + 1) * 61440))).toBe(true);
      }
      f.eng.attach(f.d.device, f.d.mem);
    }
    expect(caught).toBe(1);
  });
});

describe.skipIf(!SPARE_CPU)('BlkQueueEngine copy helper (disk image: cached-only READs)', () => {
  let f: Fixture;
  beforeEach(() => (f = new Fixture(false)));
  afterEach(() => f.close());

  /** BATCH 4k READs of consecutive blocks from `first`; each buffer filled with 0xaa first. */
  const reads = (first: number, tag: number) =>
    Array.from({ length: BATCH }, (_, k) => {
      const block = first + k;
      const addr = f.d.buf(4096);
      f.d.mem.fill(addr, 4096, 0xaa);
      return { block, addr, st: f.d.add(VIRTIO_BLK_T_IN, block * 8, [], [{ addr, len: 4096 }], tag + k) };
    });

  const serve = (n: number): Promise<number> => f.serve(n);

  const check = (rs: ReturnType<typeof reads>): void => {
    for (const r of rs) {
      expect(f.d.mem.readU8(r.st)).toBe(VIRTIO_BLK_S_OK);
      expect(Buffer.from(f.d.mem.slice(r.addr, 4096)).equals(f.initial.subarray(r.block * 4096, (r.block + 1) * 4096))).toBe(true);
    }
  };

  /** Batches of READs from block `from` on, each checked, until `done()` (20 s at most); returns the next block. */
  const readUntil = async (done: () => boolean, from = 0): Promise<number> => {
    const end = Date.now() + 20_000;
    let block = from;
    while (!done()) {
      if (Date.now() > end) throw new Error('the copy helper never took a READ');
      const rs = reads(block, block);
      block += BATCH;
      await serve(BATCH);
      check(rs);
      await new Promise((r) => setTimeout(r, 25));
    }
    return block;
  };

  it('copies cached data on the helper thread; data out of the page cache is read through io_uring, whole', async () => {
    // Cached (just written): the helper takes READs once its thread runs.
    await readUntil(() => f.eng.helperCopies > 0);
    expect(f.eng.cachedReadMisses).toBe(0);

    // Written back and dropped from the page cache: the helper's READs find nothing and io_uring reads the disk.
    for (const args of [['sync', f.file], ['dd', `if=${f.file}`, 'iflag=nocache', 'count=0', 'status=none']]) {
      expect(spawnSync(args[0], args.slice(1)).status).toBe(0);
    }
    const helped = f.eng.helperCopies;
    let misses = 0;
    // Far apart so readahead of one batch does not fill the next; several rounds since a READ that finds the
    // helper busy or the queue idle goes to io_uring without asking it.
    for (let round = 0; round < 20 && misses === 0; round++) {
      const rs = reads(2048 + round * 512, 100_000 + round * BATCH);
      await serve(BATCH);
      check(rs);
      misses = f.eng.cachedReadMisses;
    }
    expect(misses).toBeGreaterThan(0);
    expect(f.eng.helperCopies).toBeGreaterThan(helped);
  });

  it('an image on a file system that refuses cached-only reads (FUSE in the lab, tmpfs here) is read whole through io_uring', async () => {
    // The engine is not told the image is memory-backed, as with an image on virtiofs: RWF_NOWAIT gets EOPNOTSUPP.
    f.close();
    f = new Fixture(false, '/dev/shm');
    const block = await readUntil(() => !f.eng.cachedReads);
    // Refused once: no READ goes to the helper again, and every READ still returns the image's bytes.
    const helped = f.eng.helperCopies;
    let rounds = 0;
    await readUntil(() => ++rounds > 3, block);
    expect(f.eng.helperCopies).toBe(helped);
    expect(f.eng.cachedReadMisses).toBe(0);
  });
});
