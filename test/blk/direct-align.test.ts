// direct=on: requests O_DIRECT cannot take as they are (guest buffers off the alignment, 512-byte sectors on
// a 4096-byte device) are served through an aligned buffer, as Cloud Hypervisor's vhost_user_block serves them.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { eventfdWrite } from '../../protocol/sys/fd.js';
import { BlkConfig, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES } from '../../protocol/virtio/index.js';
import { DiskImage } from '../../backends/vhost-user-blk/image.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const SIZE = 1 << 20;
/** O_DIRECT needs a file system that takes it: /var/tmp is on disk (tmpfs may refuse it). */
const BASE = existsSync('/var/tmp') ? '/var/tmp' : '/tmp';

let dir: string;
let child: ChildProcess | null = null;
let client: BlkVuClient | null = null;
let loop: string | null = null;

beforeEach(() => {
  dir = mkdtempSync(join(BASE, 'kumo-direct-'));
});

afterEach(async () => {
  client?.close();
  client = null;
  if (child) await stopBackend(child);
  child = null;
  if (loop !== null) spawnSync('losetup', ['-d', loop]);
  loop = null;
  rmSync(dir, { recursive: true, force: true });
});

/** Publishes every queue, kicks them, then waits for `count[q]` completions on each. */
function runAll(c: BlkVuClient, count: number[]): void {
  for (const q of c.queues) {
    q.driver.publish();
    if (q.driver.kickNeeded()) eventfdWrite(q.kick);
  }
  count.forEach((n, q) => c.run(q, n));
}

/**
 * A loop device with 4096-byte sectors over a file holding `data` (detached in afterEach). With `directIo`
 * it passes requests on to the file asynchronously, so requests in flight together may complete in any order.
 */
function loopDevice(data: Buffer, directIo = false): string {
  const backing = join(dir, 'backing.raw');
  writeFileSync(backing, data);
  const r = spawnSync('losetup', ['-f', '--show', '--sector-size', '4096', ...(directIo ? ['--direct-io=on'] : []), backing], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
}

function guestBytes(c: BlkVuClient, addr: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  c.mem.read(addr, b);
  return b;
}

function readDevice(path: string, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    expect(readSync(fd, b, 0, len, 0)).toBe(len);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Starts the back-end on `path` with `keys` after its path and socket, and connects a client (both closed after each test). */
async function serve(path: string, keys: string, opts?: Parameters<typeof BlkVuClient.connect>[1]): Promise<BlkVuClient> {
  const sock = join(dir, 's.sock');
  child = await startBackend(`path=${path},socket=${sock},${keys}`);
  client = await BlkVuClient.connect(sock, opts);
  return client;
}

/** Stops the back-end serve() started (its writes are then on the image). */
async function stopServing(): Promise<void> {
  const c = child;
  child = null;
  if (c) await stopBackend(c);
}

describe('kumo-vhost-user-blk direct=on', () => {
  it('reads into and writes from guest buffers at any address, split over segments', async () => {
    const img = join(dir, 'disk.raw');
    const initial = randomBytes(SIZE);
    writeFileSync(img, initial);
    const c = await serve(img, `direct=on`);
    const odd = (len: number, at: number) => c.buf(len + 64, 4096) + at;
    // 4 KiB at sector 24 into three pieces at odd addresses; 512 bytes at sector 3 into one at +1.
    const parts = [{ addr: odd(1000, 3), len: 1000 }, { addr: odd(3000, 17), len: 3000 }, { addr: odd(96, 5), len: 96 }];
    const one = { addr: odd(512, 1), len: 512 };
    const st = [c.add(0, VIRTIO_BLK_T_IN, 24, [], parts, 1), c.add(0, VIRTIO_BLK_T_IN, 3, [], [one], 2)];
    c.run(0, 2);
    expect(st.map((a) => c.mem.readU8(a))).toEqual([0, 0]);
    const got = Buffer.concat(parts.map((p) => guestBytes(c, p.addr, p.len)));
    expect(got.equals(initial.subarray(24 * 512, 24 * 512 + 4096))).toBe(true);
    expect(guestBytes(c, one.addr, 512).equals(initial.subarray(3 * 512, 4 * 512))).toBe(true);

    const data = randomBytes(4096 + 512);
    const w = [{ addr: odd(2048, 9), len: 2048 }, { addr: odd(2560, 33), len: 2560 }];
    c.mem.write(w[0].addr, data.subarray(0, 2048));
    c.mem.write(w[1].addr, data.subarray(2048));
    const sw = c.add(0, VIRTIO_BLK_T_OUT, 101, w, [], 3);
    c.run(0, 1);
    expect(c.mem.readU8(sw)).toBe(0);
    await stopServing();
    const after = readFileSync(img);
    expect(after.subarray(101 * 512, 101 * 512 + data.length).equals(data)).toBe(true);
    // Nothing around the written range moved.
    expect(after.subarray(0, 101 * 512).equals(initial.subarray(0, 101 * 512))).toBe(true);
    expect(after.subarray(101 * 512 + data.length).equals(initial.subarray(101 * 512 + data.length))).toBe(true);
  });

  it('serves many requests from odd buffers at once, past what the aligned-buffer pool holds', async () => {
    const img = join(dir, 'wide.raw');
    const MiB = 1 << 20;
    const n = 40; // 40 MiB in flight: the pool holds 16
    const initial = randomBytes(n * MiB);
    writeFileSync(img, initial);
    const c = await serve(img, `direct=on,queue_size=256`, { queueSize: 256, memSize: 160 << 20 });
    // Writes of 1 MiB (odd blocks) and reads of 1 MiB (even blocks), from buffers 16 bytes past a page.
    const data = randomBytes(n * MiB);
    const st: number[] = [];
    const reads: { addr: number; at: number }[] = [];
    for (let k = 0; k < n; k++) {
      const addr = c.buf(MiB + 4096, 4096) + 16;
      if (k % 2 === 1) {
        c.mem.write(addr, data.subarray(k * MiB, (k + 1) * MiB));
        st.push(c.add(0, VIRTIO_BLK_T_OUT, (k * MiB) / 512, [{ addr, len: MiB }], [], k));
      } else {
        reads.push({ addr, at: k * MiB });
        st.push(c.add(0, VIRTIO_BLK_T_IN, (k * MiB) / 512, [], [{ addr, len: MiB }], k));
      }
    }
    c.run(0, n);
    expect(st.map((a) => c.mem.readU8(a))).toEqual(new Array(n).fill(0));
    for (const r of reads) expect(guestBytes(c, r.addr, MiB).equals(initial.subarray(r.at, r.at + MiB))).toBe(true);
    await stopServing();
    const after = readFileSync(img);
    for (let k = 0; k < n; k++) {
      const want = k % 2 === 1 ? data.subarray(k * MiB, (k + 1) * MiB) : initial.subarray(k * MiB, (k + 1) * MiB);
      expect(after.subarray(k * MiB, (k + 1) * MiB).equals(want), `block ${k}`).toBe(true);
    }
  });

  it('serves a 64 MiB request off the alignment without a 64 MiB buffer', async () => {
    const img = join(dir, 'big.raw');
    const size = 80 << 20;
    writeFileSync(img, Buffer.alloc(0));
    truncateSync(img, size);
    const c = await serve(img, `direct=on`, { memSize: 160 << 20 });
    const rssAnon = () => Number(/RssAnon:\s+(\d+) kB/.exec(readFileSync(`/proc/${child?.pid}/status`, 'utf8'))?.[1]) * 1024;
    // A small bounced read first, so that the buffer and the queue thread exist before the baseline.
    const small = c.buf(600, 4096) + 16;
    c.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: small, len: 512 }], 1);
    c.run(0, 1);
    const before = rssAnon();
    const len = 64 << 20;
    const big = c.buf(len + 4096, 4096) + 16;
    c.mem.write(big + len - 4, Buffer.from([1, 2, 3, 4]));
    const st = c.add(0, VIRTIO_BLK_T_IN, 8, [], [{ addr: big, len }], 2);
    c.run(0, 1);
    expect(c.mem.readU8(st)).toBe(0);
    expect(guestBytes(c, big + len - 4, 4).equals(Buffer.alloc(4))).toBe(true);
    expect(rssAnon() - before).toBeLessThan(16 << 20);
  });

  // Root, as CI runs: a loop device with 4096-byte sectors stands in for a 4Kn disk.
  const canLoop = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0 && existsSync('/dev/loop-control');
  if (!canLoop) console.log('not root or no losetup/loop devices: the 4096-byte sector device check is skipped');
  it.skipIf(!canLoop)('serves 512-byte sectors on a 4096-byte sector device; two queues patching blocks lose nothing', async () => {
    // 4 MiB: blocks in two of the write gate's 64 KiB regions (stripes 0 and 32).
    const size = 4 * SIZE;
    const initial = randomBytes(size);
    loop = loopDevice(initial);
    const probe = DiskImage.open(loop, { readonly: true, direct: true });
    expect(probe.alignment).toBe(4096);
    probe.close();

    const c = await serve(loop, `direct=on,num_queues=2,queue_size=1024`, { numQueues: 2, queueSize: 1024, memSize: 128 << 20 });
    const cfg = new DataView(c.fe.getConfig(0, 60).buffer);
    expect(cfg.getUint32(BlkConfig.blk_size, true)).toBe(512);
    expect(cfg.getUint8(BlkConfig.physical_block_exp)).toBe(3);
    expect(cfg.getUint16(BlkConfig.min_io_size, true)).toBe(8);

    // One 512-byte sector read inside a block.
    const rb = c.buf(512);
    const sr = c.add(0, VIRTIO_BLK_T_IN, 13, [], [{ addr: rb, len: 512 }], 0);
    c.run(0, 1);
    expect(c.mem.readU8(sr)).toBe(0);
    expect(guestBytes(c, rb, 512).equals(initial.subarray(13 * 512, 14 * 512))).toBe(true);

    // Two queues hammer two blocks in different regions: queue 0 writes their even sectors and queue 1 their
    // odd ones, 128 rounds each, all in flight at once. Each write reads its block, patches its sector and
    // writes the block back.
    const ROUNDS = 128;
    const BLOCKS = [2, 2 * 256 + 5];
    const expected = Buffer.from(initial);
    const status: number[] = [];
    const counts = [0, 0];
    for (let round = 0; round < ROUNDS; round++) {
      for (let k = 0; k < 16; k++) {
        const s = BLOCKS[k >> 3] * 8 + (k & 7);
        const data = randomBytes(512);
        data.copy(expected, s * 512); // the last round's data stays
        const b = c.buf(512);
        c.mem.write(b, data);
        const q = k % 2;
        status.push(c.add(q, VIRTIO_BLK_T_OUT, s, [{ addr: b, len: 512 }], [], round * 16 + k));
        counts[q]++;
      }
    }
    runAll(c, counts);
    expect(status.every((a) => c.mem.readU8(a) === 0)).toBe(true);
    await stopServing();
    const after = readDevice(loop, size);
    const lost = [];
    for (let s = 0; s < size / 512; s++) {
      if (!after.subarray(s * 512, s * 512 + 512).equals(expected.subarray(s * 512, s * 512 + 512))) lost.push(s);
    }
    expect(lost).toEqual([]);
  });

  it.skipIf(!canLoop)('moves requests larger than the aligned buffer through it a piece at a time', async () => {
    const size = 4 * SIZE;
    const initial = randomBytes(size);
    loop = loopDevice(initial);
    const c = await serve(loop, `direct=on`, { memSize: 128 << 20 });
    const odd = (len: number, at: number) => c.buf(len + 64, 4096) + at;
    // 2 MiB + 1 KiB at sector 3: inside a block at both ends, from three buffers at odd addresses.
    const data = randomBytes(2 * SIZE + 1024);
    const cuts = [0, 700_001, 1_500_000, data.length];
    const w = cuts.slice(1).map((end, i) => ({ addr: odd(end - cuts[i], 7 + i), len: end - cuts[i] }));
    w.forEach((seg, i) => c.mem.write(seg.addr, data.subarray(cuts[i], cuts[i + 1])));
    const sw = c.add(0, VIRTIO_BLK_T_OUT, 3, w, [], 1);
    c.run(0, 1);
    expect(c.mem.readU8(sw)).toBe(0);
    const expected = Buffer.from(initial);
    data.copy(expected, 3 * 512);
    // Read 3 MiB + 512 from sector 1 back into two odd buffers.
    const rlen = 3 * SIZE + 512;
    const r = [{ addr: odd(1_000_000, 3), len: 1_000_000 }, { addr: odd(rlen - 1_000_000, 11), len: rlen - 1_000_000 }];
    const sr = c.add(0, VIRTIO_BLK_T_IN, 1, [], r, 2);
    c.run(0, 1);
    expect(c.mem.readU8(sr)).toBe(0);
    const got = Buffer.concat(r.map((p) => guestBytes(c, p.addr, p.len)));
    expect(got.equals(expected.subarray(512, 512 + rlen))).toBe(true);
    await stopServing();
    expect(readDevice(loop, size).equals(expected)).toBe(true);
  });

  it.skipIf(!canLoop)('a patch on one queue never writes stale data over a whole-block write on another', async () => {
    const size = 4 * SIZE;
    const initial = randomBytes(size);
    loop = loopDevice(initial, true);
    const c = await serve(loop, `direct=on,num_queues=2,queue_size=1024`, { numQueues: 2, queueSize: 1024, memSize: 128 << 20 });
    // Blocks 256-1023 (regions 1-3), in waves: queue 1 writes each whole block once from an aligned buffer
    // (straight to the file, counted by the gate) while queue 0 patches each block's first sector, all in
    // flight at once. Whichever of the two lands last, sectors 1-7 must then hold the whole-block write's data.
    const first = 256;
    const blocks = 768;
    const wide = c.buf(blocks * 4096, 4096);
    const pb = c.buf(512);
    const stale: string[] = [];
    for (let wave = 0; wave < 8; wave++) {
      const data = randomBytes(blocks * 4096);
      c.mem.write(wide, data);
      const patch = randomBytes(512);
      c.mem.write(pb, patch);
      const status: number[] = [];
      for (let k = 0; k < blocks; k++) {
        status.push(c.add(1, VIRTIO_BLK_T_OUT, (first + k) * 8, [{ addr: wide + k * 4096, len: 4096 }], [], k));
        status.push(c.add(0, VIRTIO_BLK_T_OUT, (first + k) * 8, [{ addr: pb, len: 512 }], [], k));
      }
      runAll(c, [blocks, blocks]);
      expect(status.every((a) => c.mem.readU8(a) === 0)).toBe(true);
      const after = readDevice(loop, size);
      for (let k = 0; k < blocks; k++) {
        const got = after.subarray((first + k) * 4096, (first + k + 1) * 4096);
        const sent = data.subarray(k * 4096, (k + 1) * 4096);
        const head = got.subarray(0, 512);
        if (!got.subarray(512).equals(sent.subarray(512)) || !(head.equals(patch) || head.equals(sent.subarray(0, 512)))) stale.push(`${wave}:${first + k}`);
      }
    }
    expect(stale).toEqual([]);
  });

  const canMkfs = canLoop && spawnSync('mkfs.ext4', ['-V']).status === 0;
  if (canLoop && !canMkfs) console.log('no mkfs.ext4: the image file on a 4096-byte sector file system check is skipped');

  /** Runs `body` with an ext4 mounted over a 4096-byte-sector loop device; stops the back-end and unmounts after. */
  async function onExt4Of4kSectors(body: (mnt: string) => Promise<void>): Promise<void> {
    loop = loopDevice(Buffer.alloc(16 << 20));
    expect(spawnSync('mkfs.ext4', ['-q', '-F', '-b', '4096', loop]).status).toBe(0);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    expect(spawnSync('mount', [loop, mnt]).status).toBe(0);
    try {
      await body(mnt);
    } finally {
      client?.close();
      client = null;
      if (child) await stopBackend(child);
      child = null;
      spawnSync('umount', [mnt]);
    }
  }

  it.skipIf(!canMkfs)('an image file whose end is inside a 4096-byte block keeps its size when that block is patched', async () => {
    // ext4 on a 4096-byte sector device: O_DIRECT there takes whole 4096-byte blocks, past the file's end too.
    await onExt4Of4kSectors(async (mnt) => {
      const img = join(mnt, 'disk.raw');
      const size = 64 * 1024 + 512;
      const initial = randomBytes(size);
      writeFileSync(img, initial);
      const c = await serve(img, `direct=on`);
      const last = size / 512 - 1;
      const data = randomBytes(1024);
      const b = c.buf(1024);
      c.mem.write(b, data);
      const expected = Buffer.from(initial);
      const st = [
        // The last sector alone, then the two before it through one block boundary, then WRITE_ZEROES of the last.
        c.add(0, VIRTIO_BLK_T_OUT, last, [{ addr: b, len: 512 }], [], 0),
        c.add(0, VIRTIO_BLK_T_OUT, last - 2, [{ addr: b, len: 1024 }], [], 1),
      ];
      c.run(0, 2);
      st.push(c.add(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, [c.ranges([{ sector: last, numSectors: 1, flags: 0 }])], [], 2));
      c.run(0, 1);
      data.copy(expected, (last - 2) * 512);
      expected.fill(0, last * 512);
      expect(st.map((a) => c.mem.readU8(a))).toEqual([0, 0, 0]);
      expect(statSync(img).size).toBe(size);
      await stopServing();
      expect(readFileSync(img).equals(expected)).toBe(true);
    });
  });

  it.skipIf(!canMkfs)('a fresh sparse image on a 4096-byte sector file system takes 512-byte writes and reads', async () => {
    // The alignment probe used to read inside a hole, which the kernel answers without its alignment check: 512.
    await onExt4Of4kSectors(async (mnt) => {
      const img = join(mnt, 'fresh.raw');
      writeFileSync(img, '');
      truncateSync(img, 1 << 20);
      const c = await serve(img, 'direct=on');
      const data = randomBytes(512);
      const w = c.buf(512);
      c.mem.write(w, data);
      const r = c.buf(512);
      const st = [c.add(0, VIRTIO_BLK_T_OUT, 1, [{ addr: w, len: 512 }], [], 0)];
      c.run(0, 1);
      st.push(c.add(0, VIRTIO_BLK_T_IN, 1, [], [{ addr: r, len: 512 }], 1));
      c.run(0, 1);
      expect(st.map((a) => c.mem.readU8(a))).toEqual([0, 0]);
      expect(Buffer.from(c.mem.slice(r, 512)).equals(data)).toBe(true);
      await stopServing();
      expect(readFileSync(img).subarray(512, 1024).equals(data)).toBe(true);
    });
  });

  for (const direct of [true, false]) {
    it.skipIf(!canLoop)(`WRITE_ZEROES and DISCARD off the 4096-byte blocks of a block device (direct=${direct ? 'on' : 'off'})`, async () => {
      const initial = randomBytes(SIZE);
      loop = loopDevice(initial);
      const c = await serve(loop, `direct=${direct ? 'on' : 'off'}`);
      const cfg = new DataView(c.fe.getConfig(0, 60).buffer);
      expect(cfg.getUint32(BlkConfig.discard_sector_alignment, true)).toBe(8);
      expect(cfg.getUint8(BlkConfig.physical_block_exp)).toBe(3);
      const expected = Buffer.from(initial);
      // [first sector, sectors]: inside one block, across a boundary, whole blocks with ragged ends, whole blocks.
      const zeroes: [number, number][] = [[1, 2], [15, 2], [33, 30], [128, 16]];
      const st: number[] = [];
      zeroes.forEach(([sector, n], k) => {
        st.push(c.add(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, [c.ranges([{ sector, numSectors: n, flags: k % 2 }])], [], k));
        expected.fill(0, sector * 512, (sector + n) * 512);
      });
      // A discard off the blocks is a hint: it succeeds, and only the whole block inside it may change.
      st.push(c.add(0, VIRTIO_BLK_T_DISCARD, 0, [c.ranges([{ sector: 260, numSectors: 14, flags: 0 }])], [], 9));
      c.run(0, zeroes.length + 1);
      expect(st.map((a) => c.mem.readU8(a))).toEqual([0, 0, 0, 0, 0]);
      await stopServing();
      const after = readDevice(loop, SIZE);
      // The discard's partial blocks (sectors 260-263 and 272-273) keep their data; block 33 (264-271) is free to change.
      after.copy(expected, 264 * 512, 264 * 512, 272 * 512);
      const wrong: number[] = [];
      for (let s = 0; s < SIZE / 512; s++) {
        if (!after.subarray(s * 512, s * 512 + 512).equals(expected.subarray(s * 512, s * 512 + 512))) wrong.push(s);
      }
      expect(wrong).toEqual([]);
    });
  }
});
