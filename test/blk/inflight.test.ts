// INFLIGHT_SHMFD: a back-end killed with requests in flight, restarted, and reconnected to the way QEMU (chardev
// reconnect) does it, serves every request it had taken exactly once, whatever order completions had come in.
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ftruncate, mapFd, memfdCreate } from '../../protocol/sys/mem.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { Epoll, EPOLLIN } from '../../protocol/sys/epoll.js';
import { inflightRegionSize } from '../../protocol/virtqueue/index.js';
import { BlkConfig, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const BLOCK = 4096;
const SECTORS = BLOCK / 512;

let dir = '';
let child: ChildProcess | null = null;
let client: BlkVuClient | null = null;
afterEach(async () => {
  client?.close();
  client = null;
  if (child) await stopBackend(child, 'SIGKILL');
  child = null;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function image(bytes: number, base = '/dev/shm'): { img: string; sock: string; args: string } {
  dir = mkdtempSync(join(base, 'kumo-inflight-'));
  const img = join(dir, 'disk.raw');
  const sock = join(dir, 'blk.sock');
  writeFileSync(img, Buffer.alloc(bytes));
  return { img, sock, args: `path=${img},socket=${sock},queue_size=128` };
}

/** A 4k write of `fill` to block `blk` on queue q; returns its status byte's address. */
function write(c: BlkVuClient, q: number, blk: number, fill: number, token: number): number {
  const a = c.buf(BLOCK, BLOCK);
  c.mem.slice(a, BLOCK).fill(fill);
  return c.add(q, VIRTIO_BLK_T_OUT, blk * SECTORS, [{ addr: a, len: BLOCK }], [], token);
}

/** A back-end on a fresh 1 MiB image, a client with an inflight buffer, and one completed 4k write of 0x11 to `blk`. */
async function servedOnce(blk: number): Promise<{ img: string; sock: string; args: string; c: BlkVuClient; be: ChildProcess }> {
  const im = image(1 << 20);
  const be = (child = await startBackend(im.args));
  const c = (client = await BlkVuClient.connect(im.sock, { queueSize: 128, inflight: true }));
  write(c, 0, blk, 0x11, 0);
  expect(c.run(0, 1).size).toBe(1);
  return { ...im, c, be };
}

describe('vhost-user-blk inflight tracking across a back-end restart', () => {
  it('resubmits the requests the killed back-end took and never returned, and does not repeat the one it did', async () => {
    const { img, sock, args, c, be } = await servedOnce(10);
    await stopBackend(be, 'SIGKILL');

    // The killed back-end's last moments, as it would have left them: it took a, b and c, and returned c only
    // (c's write never reached the disk here, so a repeat of it would show).
    const heads: number[] = [];
    write(c, 0, 0, 0xa1, 1);
    heads.push(c.lastHead);
    write(c, 0, 1, 0xb2, 2);
    heads.push(c.lastHead);
    write(c, 0, 2, 0xc3, 3);
    heads.push(c.lastHead);
    const q = c.queues[0];
    q.driver.publish();
    const inf = c.inflight!;
    const map = mapFd(inf.fd, inf.buffer.mmapSize, inf.buffer.mmapOffset);
    try {
      const region = new DataView(map.bytes.buffer, map.bytes.byteOffset, inflightRegionSize(128));
      const used = c.mem.readU16(q.layout.usedAddr + 2);
      heads.forEach((h, i) => {
        region.setUint8(16 + 16 * h, i < 2 ? 1 : 0);
        region.setBigUint64(16 + 16 * h + 8, BigInt(1000 + i), true);
      });
      region.setUint16(12, heads[2], true); // last_batch_head
      region.setUint16(14, (used + 1) & 0xffff, true); // used_idx
      const slot = used % 128;
      c.mem.writeU32(q.layout.usedAddr + 4 + 8 * slot, heads[2]);
      c.mem.writeU32(q.layout.usedAddr + 8 + 8 * slot, 1);
      c.mem.writeU16(q.layout.usedAddr + 2, (used + 1) & 0xffff);
    } finally {
      map.unmap();
    }

    child = await startBackend(args);
    await c.reconnect(sock);
    expect([...c.run(0, 3).keys()].sort()).toEqual([1, 2, 3]);
    write(c, 0, 3, 0xd4, 4);
    expect([...c.run(0, 1).keys()]).toEqual([4]);
    const disk = readFileSync(img);
    expect(disk[0 * BLOCK]).toBe(0xa1);
    expect(disk[1 * BLOCK]).toBe(0xb2);
    expect(disk.subarray(2 * BLOCK, 3 * BLOCK).every((b) => b === 0)).toBe(true);
    expect(disk[3 * BLOCK]).toBe(0xd4);
  });

  it('under load on two queues (writes and FLUSHes on disk), kill -9 and restart three times: every request completes once and its data is on disk', async () => {
    const QUEUES = 2;
    const DEPTH = 32;
    const PER_QUEUE = 4096;
    // On a disk file system, with a FLUSH every 8th request: FLUSHes take milliseconds while writes go by them, so
    // requests complete out of order and replaying the ring from its used index would repeat some and skip others.
    const { img, sock } = image(QUEUES * PER_QUEUE * BLOCK, '/var/tmp');
    const args = `path=${img},socket=${sock},queue_size=128,num_queues=${QUEUES}`;
    child = await startBackend(args);
    const c = (client = await BlkVuClient.connect(sock, { numQueues: QUEUES, queueSize: 128, inflight: true, memSize: 64 << 20 }));
    const data = Array.from({ length: QUEUES }, () => Array.from({ length: DEPTH }, () => c.buf(BLOCK, BLOCK)));
    const status = Array.from({ length: QUEUES }, () => Array.from({ length: DEPTH }, () => c.buf(1, 1)));
    const next = new Array<number>(QUEUES).fill(0);
    // Requests complete out of order: a finished request's slot (data and status buffers) goes to the next one.
    const freeSlots = Array.from({ length: QUEUES }, () => Array.from({ length: DEPTH }, (_, k) => k));
    const slotOf = new Map<number, number>();
    const done = new Set<number>();
    const fill = (seq: number) => (seq * 7 + 1) & 0xff || 1;
    const isFlush = (seq: number) => seq % 8 === 7;
    // token = q * PER_QUEUE + seq; request seq of queue q writes block token.
    const submit = (q: number): void => {
      const seq = next[q]++;
      const slot = freeSlots[q].pop()!;
      slotOf.set(q * PER_QUEUE + seq, slot);
      c.mem.slice(data[q][slot], BLOCK).fill(fill(seq));
      const hdr = c.buf(16, 16);
      c.mem.write(hdr, new Uint8Array(16));
      const dv = new DataView(c.mem.slice(hdr, 16).buffer, c.mem.slice(hdr, 16).byteOffset, 16);
      dv.setUint32(0, isFlush(seq) ? VIRTIO_BLK_T_FLUSH : VIRTIO_BLK_T_OUT, true);
      dv.setBigUint64(8, isFlush(seq) ? 0n : BigInt((q * PER_QUEUE + seq) * SECTORS), true);
      c.mem.writeU8(status[q][slot], 0xff);
      const readable = isFlush(seq) ? [{ addr: hdr, len: 16 }] : [{ addr: hdr, len: 16 }, { addr: data[q][slot], len: BLOCK }];
      c.addRaw(q, readable, [{ addr: status[q][slot], len: 1 }], q * PER_QUEUE + seq);
    };
    const ep = new Epoll(4);
    c.queues.forEach((q, i) => ep.add(q.call, EPOLLIN, i));
    try {
      const pump = (until: number, deadlineMs: number, refill: boolean): void => {
        const end = Date.now() + deadlineMs;
        while (done.size < until) {
          if (Date.now() > end) throw new Error(`stalled: ${done.size}/${until} requests completed`);
          c.queues.forEach((q, qi) => {
            for (const u of q.driver.takeUsed()) {
              expect(done.has(u.token), `request ${u.token} completed twice`).toBe(false);
              const slot = slotOf.get(u.token)!;
              expect(c.mem.readU8(status[qi][slot])).toBe(VIRTIO_BLK_S_OK);
              done.add(u.token);
              freeSlots[qi].push(slot);
              if (refill && next[qi] < PER_QUEUE - DEPTH) submit(qi);
            }
            q.driver.publish();
            if (q.driver.kickNeeded()) eventfdWrite(q.kick);
          });
          if (ep.wait(20) > 0) for (const q of c.queues) try { eventfdRead(q.call); } catch { /* nothing pending */ }
        }
      };
      for (let qi = 0; qi < QUEUES; qi++) for (let k = 0; k < DEPTH; k++) submit(qi);
      for (let round = 1; round <= 3; round++) {
        pump(round * 1500, 20_000, true);
        await stopBackend(child, 'SIGKILL');
        child = await startBackend(args);
        await c.reconnect(sock);
      }
      pump(next.reduce((a, b) => a + b, 0), 20_000, false);
      // Nothing more comes back: a repeat would be a used entry for a request no longer in flight (DriverQueue throws).
      await new Promise((r) => setTimeout(r, 200));
      c.queues.forEach((q) => expect(q.driver.takeUsed()).toEqual([]));
      const disk = readFileSync(img);
      for (let qi = 0; qi < QUEUES; qi++) {
        for (let seq = 0; seq < next[qi]; seq++) {
          if (isFlush(seq)) continue;
          const at = (qi * PER_QUEUE + seq) * BLOCK;
          expect(disk[at], `block of request ${qi * PER_QUEUE + seq}`).toBe(fill(seq));
          expect(disk[at + BLOCK - 1]).toBe(fill(seq));
        }
      }
    } finally {
      ep.close();
    }
  }, 90_000);

  it('a front-end buffer of random bytes, or one its file cannot hold, never crashes the back-end', async () => {
    const { img, sock, args, c, be } = await servedOnce(0);
    await stopBackend(be, 'SIGKILL');
    const inf = c.inflight!;
    const map = mapFd(inf.fd, inf.buffer.mmapSize, inf.buffer.mmapOffset);
    try {
      map.bytes.set(randomBytes(map.bytes.length));
      // Claims to be a record of this ring, with far more heads in flight than the driver ever made available.
      const dv = new DataView(map.bytes.buffer, map.bytes.byteOffset, map.bytes.length);
      dv.setUint16(8, 1, true);
      dv.setUint16(10, 128, true);
    } finally {
      map.unmap();
    }
    child = await startBackend(args);
    await c.reconnect(sock);
    write(c, 0, 1, 0x22, 1);
    expect([...c.run(0, 1).keys()]).toEqual([1]);
    expect(readFileSync(img)[BLOCK]).toBe(0x22);
    c.close();
    client = null;

    // A buffer larger than its file would fault the queue thread: refused, and the connection with it.
    const fe = await VhostUserFrontend.connect(sock, { retryForMs: 5000 });
    const small = memfdCreate('small-inflight');
    try {
      ftruncate(small, 4096);
      fe.negotiate(0n, 0x9209n);
      expect(() => fe.setInflightFd({ kind: 'inflight', mmapSize: 1 << 20, mmapOffset: 0, numQueues: 1, queueSize: 128 }, small)).toThrow();
    } finally {
      fe.close();
      closeQuiet(small);
    }
    expect(child.exitCode).toBeNull();
    client = await BlkVuClient.connect(sock, { queueSize: 128, inflight: true });
    write(client, 0, 2, 0x33, 2);
    expect([...client.run(0, 1).keys()]).toEqual([2]);
  });

  it('a buffer in a file that cannot be sealed (truncated later by the front-end) is refused, not a SIGBUS', async () => {
    const { img, sock, args, c, be } = await servedOnce(0);
    // A plain tmpfs file takes no seals: the front-end could shrink it under the queue thread at any time.
    const path = join(dir, 'inflight');
    writeFileSync(path, Buffer.alloc(4096));
    const fd = openSync(path, 'r+');
    try {
      try {
        c.fe.setInflightFd({ kind: 'inflight', mmapSize: inflightRegionSize(128), mmapOffset: 0, numQueues: 1, queueSize: 128 }, fd);
      } catch {
        // refused with REPLY_ACK
      }
      c.fe.setVringKick(0, c.queues[0].kick); // the ring restarts, with whatever buffer the back-end took
      c.fe.getFeatures(); // a reply: the back-end has handled both
      ftruncateSync(fd, 0);
      write(c, 0, 1, 0x22, 1);
      expect([...c.run(0, 1).keys()]).toEqual([1]);
    } finally {
      closeSync(fd);
    }
    expect(be.exitCode).toBeNull();
    expect(be.signalCode).toBeNull();
    expect(readFileSync(img)[BLOCK]).toBe(0x22);
  });

  it('a guest\'s writethrough choice outlives the back-end: QEMU\'s reconnect never writes the config again', async () => {
    const { sock, args, c, be } = await servedOnce(0);
    c.fe.setConfig(BlkConfig.writeback, Uint8Array.of(0));
    expect(c.fe.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    await stopBackend(be, 'SIGKILL');
    // A guest that chose writethrough sends no FLUSH: a restarted back-end in writeback would ack writes still in
    // the host's page cache.
    let log = '';
    child = await startBackend(args, { KUMO_LOG: 'info' });
    child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    await c.reconnect(sock);
    expect(c.fe.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    // The guest turns writeback back on; the next back-end is told that too.
    c.fe.setConfig(BlkConfig.writeback, Uint8Array.of(1));
    await stopBackend(child, 'SIGKILL');
    child = await startBackend(args);
    await c.reconnect(sock);
    expect(c.fe.getConfig(BlkConfig.writeback, 1)[0]).toBe(1);
    for (let i = 0; i < 40 && !log.includes('cache mode restored'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(log).toContain('cache mode restored from the inflight buffer');
    write(c, 0, 1, 0x22, 1);
    expect([...c.run(0, 1).keys()]).toEqual([1]);
  });

  it('a device-state record the front-end scribbled on is ignored with a warning; the connection goes on', async () => {
    const { sock, args, c, be } = await servedOnce(0);
    c.fe.setConfig(BlkConfig.writeback, Uint8Array.of(0));
    await stopBackend(be, 'SIGKILL');
    const inf = c.inflight!;
    const map = mapFd(inf.fd, inf.buffer.mmapSize, inf.buffer.mmapOffset);
    try {
      // The record follows the queue's region: its magic kept, its state a byte no writeback choice has.
      const at = inflightRegionSize(128);
      expect(inf.buffer.mmapSize).toBeGreaterThanOrEqual(at + 64);
      expect(Buffer.from(map.bytes.subarray(at, at + 8)).toString('ascii')).toBe('KUMO-DS1');
      map.bytes[at + 12] = 7;
    } finally {
      map.unmap();
    }
    let log = '';
    child = await startBackend(args);
    child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    await c.reconnect(sock);
    expect(c.fe.getConfig(BlkConfig.writeback, 1)[0]).toBe(1);
    write(c, 0, 1, 0x22, 1);
    expect([...c.run(0, 1).keys()]).toEqual([1]);
    for (let i = 0; i < 40 && !log.includes('not restored'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(log).toContain('device state in the inflight buffer not restored');
  });
});
