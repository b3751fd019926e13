import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnSync, type ChildProcess } from 'node:child_process';
import {
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR,
  BlkConfig, bit, VIRTIO_BLK_F_RO, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD,
} from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const SIZE = 4 << 20;

describe('kumo-vhost-user-blk process', () => {
  let dir: string;
  let img: string;
  let sock: string;
  let initial: Buffer;
  let child: ChildProcess | null = null;
  let client: BlkVuClient | null = null;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vub-'));
    img = join(dir, 'disk.raw');
    sock = join(dir, 'blk.sock');
    initial = randomBytes(SIZE);
    writeFileSync(img, initial);
  });
  afterEach(async () => {
    client?.close();
    client = null;
    if (child) await stopBackend(child);
    child = null;
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps the writeback a driver chose when SET_FEATURES comes again and when the front-end reconnects; RESET_DEVICE forgets it', async () => {
    child = await startBackend(`path=${img},socket=${sock}`);
    client = await BlkVuClient.connect(sock);
    const wb = (c: BlkVuClient): number => c.fe.getConfig(BlkConfig.writeback, 1)[0];
    expect(wb(client)).toBe(1);
    client.fe.setConfig(BlkConfig.writeback, Uint8Array.of(0));
    // QEMU sends SET_FEATURES again at every vhost_dev_start (stop/cont): the guest, which chose writethrough, sends no FLUSH.
    client.fe.setFeatures(client.features);
    expect(wb(client)).toBe(0);
    // QEMU reconnecting restores features, memory and rings but never writes the config again: the guest still
    // believes it chose writethrough, and sends no FLUSH (qemu-storage-daemon keeps the mode too).
    client.close();
    client = await BlkVuClient.connect(sock);
    expect(wb(client)).toBe(0);
    client.fe.resetDevice();
    client.fe.setFeatures(client.features);
    expect(wb(client)).toBe(1);
  });

  it('serves WRITE_ZEROES and DISCARD with queue_size=1 (its io_uring once had room for one SQE, and waited for two)', async () => {
    child = await startBackend(`path=${img},socket=${sock},queue_size=1`);
    client = await BlkVuClient.connect(sock, { queueSize: 1 });
    const statuses: number[] = [];
    for (const [type, flags] of [[VIRTIO_BLK_T_WRITE_ZEROES, 0], [VIRTIO_BLK_T_WRITE_ZEROES, 1], [VIRTIO_BLK_T_DISCARD, 0]]) {
      const st = client.add(0, type, 0, [client.ranges([{ sector: 8, numSectors: 8, flags }])], [], 1);
      client.run(0, 1, 5000);
      statuses.push(client.mem.readU8(st));
    }
    expect(statuses).toEqual([0, 0, 0]);
    expect(readFileSync(img).subarray(4096, 8192).equals(Buffer.alloc(4096))).toBe(true);
  });

  it('serves reads, writes, flush and GET_ID; config space over GET_CONFIG', async () => {
    child = await startBackend(`path=${img},socket=${sock},num_queues=2,queue_size=256`);
    client = await BlkVuClient.connect(sock, { numQueues: 2, queueSize: 256 });
    expect(client.fe.getQueueNum()).toBe(2);
    const cfg = new DataView(client.fe.getConfig(0, 60).buffer);
    expect(Number(cfg.getBigUint64(0, true))).toBe(SIZE / 512);
    expect(cfg.getUint16(BlkConfig.num_queues, true)).toBe(2);
    // As Cloud Hypervisor: the guest's optimal_io_size reads 512, not 0.
    expect([cfg.getUint16(BlkConfig.min_io_size, true), cfg.getUint32(BlkConfig.opt_io_size, true)]).toEqual([1, 1]);

    const data = randomBytes(65536);
    const w = client.buf(65536);
    client.mem.write(w, data);
    const st1 = client.add(1, VIRTIO_BLK_T_OUT, 100, [{ addr: w, len: 65536 }], [], 1);
    const st2 = client.add(1, VIRTIO_BLK_T_FLUSH, 0, [], [], 2);
    client.run(1, 2);
    expect([client.mem.readU8(st1), client.mem.readU8(st2)]).toEqual([0, 0]);

    const r = client.buf(65536);
    const st3 = client.add(0, VIRTIO_BLK_T_IN, 100, [], [{ addr: r, len: 65536 }], 3);
    const id = client.buf(20);
    const st4 = client.add(0, VIRTIO_BLK_T_GET_ID, 0, [], [{ addr: id, len: 20 }], 4);
    const used = client.run(0, 2);
    expect(used.get(3)).toBe(65537);
    expect([client.mem.readU8(st3), client.mem.readU8(st4)]).toEqual([0, 0]);
    expect(Buffer.from(client.mem.slice(r, 65536)).equals(data)).toBe(true);
    const st = statSync(img, { bigint: true });
    expect(Buffer.from(client.mem.slice(id, 20)).toString().replace(/\0+$/, '')).toBe(`${st.dev}${st.rdev}${st.ino}`.slice(0, 20));
    expect(readFileSync(img).subarray(51200, 51200 + 65536).equals(data)).toBe(true);
  });

  it('serves a sparse image past 1 PiB to its last sector (requests beyond 2^41 sectors were IOERR), and refuses one over 2^53 bytes', async (ctx) => {
    const big = join('/dev/shm', `kumo-vub-big-${process.pid}.raw`); // tmpfs takes sparse files this large
    if (!existsSync('/dev/shm')) return ctx.skip();
    try {
      const sectors = 2 ** 44; // 2^53 bytes: the largest served
      writeFileSync(big, '');
      const truncate = (bytes: bigint): void => void expect(spawnSync('truncate', ['-s', String(bytes), big]).status).toBe(0);
      truncate(2n ** 53n);
      child = await startBackend(`path=${big},socket=${sock}`);
      client = await BlkVuClient.connect(sock);
      expect(Number(new DataView(client.fe.getConfig(0, 8).buffer).getBigUint64(0, true))).toBe(sectors);
      const data = randomBytes(4096);
      const w = client.buf(4096);
      client.mem.write(w, data);
      const at = [2 ** 41, sectors - 8];
      const st = at.map((s, i) => client!.add(0, VIRTIO_BLK_T_OUT, s, [{ addr: w, len: 4096 }], [], i + 1));
      const past = client.add(0, VIRTIO_BLK_T_OUT, sectors, [{ addr: w, len: 512 }], [], 9);
      client.run(0, 3);
      expect([...st, past].map((a) => client!.mem.readU8(a))).toEqual([0, 0, 1]);
      const r = client.buf(4096);
      const rs = client.add(0, VIRTIO_BLK_T_IN, sectors - 8, [], [{ addr: r, len: 4096 }], 10);
      client.run(0, 1);
      expect(client.mem.readU8(rs)).toBe(0);
      expect(Buffer.from(client.mem.slice(r, 4096)).equals(data)).toBe(true);
      client.close();
      client = null;
      await stopBackend(child);
      child = null;
      truncate(2n ** 53n + 512n);
      await expect(startBackend(`path=${big},socket=${sock}`)).rejects.toThrow(/larger than 8 PiB/);
    } finally {
      rmSync(big, { force: true });
    }
  });

  it('readonly: advertises RO, rejects writes with IOERR and leaves the file untouched', async () => {
    child = await startBackend(`path=${img},socket=${sock},readonly=on`);
    client = await BlkVuClient.connect(sock);
    expect(client.features & bit(VIRTIO_BLK_F_RO)).not.toBe(0n);
    const w = client.buf(4096);
    client.mem.fill(w, 4096, 0x77);
    const st = client.add(0, VIRTIO_BLK_T_OUT, 0, [{ addr: w, len: 4096 }], [], 1);
    const st2 = client.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: w, len: 4096 }], 2);
    client.run(0, 2);
    expect(client.mem.readU8(st)).toBe(VIRTIO_BLK_S_IOERR);
    expect(client.mem.readU8(st2)).toBe(VIRTIO_BLK_S_OK);
    expect(Buffer.from(client.mem.slice(w, 4096)).equals(initial.subarray(0, 4096))).toBe(true);
    client.close();
    client = null;
    await stopBackend(child);
    child = null;
    expect(readFileSync(img).equals(initial)).toBe(true);
  });

  it('serves 4 queues of size 1024 with hundreds of requests in flight each', async () => {
    child = await startBackend(`path=${img},socket=${sock},num_queues=4,queue_size=1024`);
    client = await BlkVuClient.connect(sock, { numQueues: 4, queueSize: 1024, memSize: 128 << 20 });
    const model = Buffer.from(initial);
    const reads: { q: number; addr: number; block: number }[] = [];
    for (let q = 0; q < 4; q++) {
      // queue q owns blocks q, q+4, q+8...: writes first, then reads of the same blocks, in one batch each
      const blocks = Array.from({ length: 250 }, (_, i) => (i * 4 + q) % (SIZE / 4096));
      for (const [i, b] of blocks.entries()) {
        const data = randomBytes(4096);
        const a = client.buf(4096);
        client.mem.write(a, data);
        data.copy(model, b * 4096);
        client.add(q, VIRTIO_BLK_T_OUT, b * 8, [{ addr: a, len: 2048 }, { addr: a + 2048, len: 2048 }], [], i);
      }
      expect(client.run(q, 250).size).toBe(250);
      for (const [i, b] of blocks.entries()) {
        const a = client.buf(4096);
        reads.push({ q, addr: a, block: b });
        client.add(q, VIRTIO_BLK_T_IN, b * 8, [], [{ addr: a, len: 4096 }], i);
      }
    }
    for (let q = 0; q < 4; q++) expect([...client.run(q, 250).values()].every((l) => l === 4097)).toBe(true);
    for (const r of reads) expect(Buffer.from(client.mem.slice(r.addr, 4096)).equals(model.subarray(r.block * 4096, r.block * 4096 + 4096))).toBe(true);
    client.close();
    client = null;
    await stopBackend(child);
    child = null;
    expect(readFileSync(img).equals(model)).toBe(true);
  });

  it('accepts the next front-end after a disconnect', async () => {
    child = await startBackend(`path=${img},socket=${sock}`);
    for (let round = 0; round < 3; round++) {
      client = await BlkVuClient.connect(sock);
      const r = client.buf(512);
      const st = client.add(0, VIRTIO_BLK_T_IN, round, [], [{ addr: r, len: 512 }], 1);
      client.run(0, 1);
      expect(client.mem.readU8(st)).toBe(0);
      expect(Buffer.from(client.mem.slice(r, 512)).equals(initial.subarray(round * 512, round * 512 + 512))).toBe(true);
      client.close();
      client = null;
    }
  });

  it('refuses a second backend on a locked image with a clear error', async () => {
    child = await startBackend(`path=${img},socket=${sock}`);
    await expect(startBackend(`path=${img},socket=${sock}2`)).rejects.toThrow(/locked by another process/);
  });

  it('locking=off serves an image another back-end holds (the destination of a live migration), and takes no lock', async () => {
    child = await startBackend(`path=${img},socket=${sock}`);
    const second = await startBackend(`path=${img},socket=${sock}2,locking=off`);
    try {
      client = await BlkVuClient.connect(`${sock}2`);
      const r = client.buf(512);
      const st = client.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: r, len: 512 }], 1);
      client.run(0, 1);
      expect(client.mem.readU8(st)).toBe(0);
      client.close();
      client = null;
      // The unlocked one holds nothing: with the first gone, a locking back-end starts beside it.
      await stopBackend(child);
      child = await startBackend(`path=${img},socket=${sock}3`);
    } finally {
      await stopBackend(second);
    }
  });
});
