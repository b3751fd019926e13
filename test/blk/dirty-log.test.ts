// Dirty logging (VHOST_F_LOG_ALL with LOG_SHMFD), what QEMU and Cloud Hypervisor need to live-migrate a guest whose
// disk is kumo-vhost-user-blk: while the front-end logs, every guest page the back-end writes (read data, status
// bytes, the used ring) is marked in the front-end's bitmap; pages it only reads are not. The front-end's view is
// checked against qemu-storage-daemon too (libvhost-user's dirty log), so the expectations are the reference's.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeQuiet, eventfdWrite } from '../../protocol/sys/fd.js';
import { ftruncate, mapFd, memfdCreate, MFD_ALLOW_SEALING, MFD_CLOEXEC, type Mapping } from '../../protocol/sys/mem.js';
import { guestToUser } from '../../protocol/vhost-user/frontend.js';
import { VhostUserNackError } from '../../protocol/vhost-user/errors.js';
import { Request } from '../../protocol/vhost-user/messages.js';
import { VHOST_F_LOG_ALL, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, bits } from '../../protocol/virtio/index.js';
import { BlkVuClient, haveQsd, startBackend, startQsd, stopBackend } from './vu-client.js';

const PAGE = 4096;
const SECTORS = PAGE / 512;
const MEM = 64 << 20;
const LOG_ALL = bits(VHOST_F_LOG_ALL);

let dir = '';
let child: ChildProcess | null = null;
let client: BlkVuClient | null = null;
const logs: { fd: number; map: Mapping }[] = [];
afterEach(async () => {
  client?.close();
  client = null;
  for (const l of logs.splice(0)) {
    l.map.unmap();
    closeQuiet(l.fd);
  }
  if (child) await stopBackend(child, 'SIGKILL');
  child = null;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A sealable memfd log for MEM bytes of guest memory, as QEMU makes it, and a view to read it. */
function newLog(size = MEM / PAGE / 8): { fd: number; bits: Uint8Array; size: number } {
  const fd = memfdCreate('test-dirty-log', MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ftruncate(fd, size);
  const map = mapFd(fd, size);
  logs.push({ fd, map });
  return { fd, bits: map.bytes, size };
}

/** A log of `size` bytes at `offset` in a sparse memfd; `bits` views only its first pages (guest memory is small). */
function logAt(size: number, offset: number): { fd: number; bits: Uint8Array; size: number; offset: number } {
  const fd = memfdCreate('test-dirty-log', MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ftruncate(fd, offset + size);
  const map = mapFd(fd, offset + MEM / PAGE / 8);
  logs.push({ fd, map });
  return { fd, bits: map.bytes.subarray(offset), size, offset };
}

const isMarked = (log: Uint8Array, gpa: number) => (log[Math.floor(gpa / PAGE / 8)] & (1 << (Math.floor(gpa / PAGE) % 8))) !== 0;

type Start = (img: string, sock: string) => Promise<ChildProcess>;
const kumo: Start = (img, sock) => startBackend(`path=${img},socket=${sock},queue_size=128`);

async function setUp(start: Start = kumo): Promise<{ c: BlkVuClient; content: Buffer; sock: string }> {
  dir = mkdtempSync(join('/dev/shm', 'kumo-dirtylog-'));
  const img = join(dir, 'disk.raw');
  const sock = join(dir, 'blk.sock');
  const content = randomBytes(1 << 20);
  writeFileSync(img, content);
  child = await start(img, sock);
  // Acked requests, as QEMU sends SET_FEATURES and SET_VRING_ADDR while it logs: logging is on once they return.
  const c = (client = await BlkVuClient.connect(sock, { queueSize: 128, memSize: MEM, logShmfd: true, ackEveryRequest: true }));
  return { c, content, sock };
}

/** Starts logging on the running device the way QEMU does: the log, LOG_ALL, then each ring's used-ring log address. */
function startLogging(c: BlkVuClient, log: { fd: number; size: number; offset?: number }): void {
  c.fe.setLogBase(log.fd, log.size, log.offset ?? 0);
  c.fe.setFeatures(c.features | LOG_ALL);
  const l = c.queues[0].layout;
  const user = (gpa: number) => guestToUser(c.mem, gpa);
  c.fe.setVringAddr(0, { desc: user(l.descAddr), avail: user(l.availAddr), used: user(l.usedAddr), flags: 1, log: l.usedAddr });
}

/** A 4k read of block `blk` into a page of its own; returns the data and status addresses. */
function read(c: BlkVuClient, blk: number, token: number): { data: number; status: number } {
  const data = c.buf(PAGE, PAGE);
  const status = c.add(0, VIRTIO_BLK_T_IN, blk * SECTORS, [], [{ addr: data, len: PAGE }], token);
  return { data, status };
}

describe('vhost-user-blk dirty logging', () => {
  it('offers LOG_ALL and LOG_SHMFD', async () => {
    const { c } = await setUp();
    expect(c.fe.getFeatures() & LOG_ALL).toBe(LOG_ALL);
    expect(c.fe.getProtocolFeatures() & bits(1)).toBe(bits(1));
  });

  const peers: [string, Start | null][] = [['kumo-vhost-user-blk', kumo], ['qemu-storage-daemon', haveQsd() ? (img, sock) => startQsd(img, sock) : null]];
  it.each(peers)('marks read data, status bytes and the used ring while the front-end logs, and not the data it writes out (%s)', async (name, start) => {
    if (start === null) {
      console.warn(`${name} not installed: its half of the comparison is skipped`);
      return;
    }
    const { c, content } = await setUp(start);
    const log = newLog();
    startLogging(c, log);

    const reads = [3, 7, 11].map((blk, i) => ({ blk, ...read(c, blk, i) }));
    const writes = [20, 21].map((blk, i) => {
      const data = c.buf(PAGE, PAGE);
      c.mem.slice(data, PAGE).fill(0x5a);
      return { data, status: c.add(0, VIRTIO_BLK_T_OUT, blk * SECTORS, [{ addr: data, len: PAGE }], [], 10 + i) };
    });
    expect(c.run(0, 5).size).toBe(5);

    for (const r of reads) {
      expect(c.mem.readU8(r.status)).toBe(VIRTIO_BLK_S_OK);
      expect(Buffer.from(c.mem.slice(r.data, PAGE))).toEqual(content.subarray(r.blk * PAGE, (r.blk + 1) * PAGE));
      expect(isMarked(log.bits, r.data)).toBe(true);
      expect(isMarked(log.bits, r.status)).toBe(true);
    }
    for (const w of writes) {
      expect(c.mem.readU8(w.status)).toBe(VIRTIO_BLK_S_OK);
      expect(isMarked(log.bits, w.status)).toBe(true);
      expect(isMarked(log.bits, w.data)).toBe(false);
    }
    const used = c.queues[0].layout.usedAddr;
    expect(isMarked(log.bits, used)).toBe(true);
    // Nothing else: memory nobody touched stays clean.
    expect(isMarked(log.bits, MEM - PAGE)).toBe(false);

    // The front-end collects the bits and stops logging: later reads mark nothing.
    log.bits.fill(0);
    c.fe.setFeatures(c.features);
    const late = read(c, 5, 20);
    expect(c.run(0, 1).size).toBe(1);
    expect(isMarked(log.bits, late.data)).toBe(false);
    expect(log.bits.every((b) => b === 0)).toBe(true);
  });

  it('marks the used ring at its own address while LOG_ALL is on but the ring\'s log address is not sent yet', async () => {
    const { c } = await setUp();
    const log = newLog();
    // QEMU's order: the log, LOG_ALL, then each ring's SET_VRING_ADDR with VRING_F_LOG. Completions come in between.
    c.fe.setLogBase(log.fd, log.size);
    c.fe.setFeatures(c.features | LOG_ALL);
    const r = read(c, 1, 0);
    expect(c.run(0, 1).size).toBe(1);
    expect(isMarked(log.bits, r.data)).toBe(true);
    expect(isMarked(log.bits, c.queues[0].layout.usedAddr)).toBe(true);
  });

  it.each(peers)('moves to a new log when the front-end sends one (one per pass, as Cloud Hypervisor does) (%s)', async (name, start) => {
    if (start === null) return;
    const { c } = await setUp(start);
    const first = newLog();
    startLogging(c, first);
    const a = read(c, 1, 0);
    expect(c.run(0, 1).size).toBe(1);
    expect(isMarked(first.bits, a.data)).toBe(true);

    const second = newLog();
    c.fe.setLogBase(second.fd, second.size);
    const b = read(c, 2, 1);
    expect(c.run(0, 1).size).toBe(1);
    expect(isMarked(second.bits, b.data)).toBe(true);
    expect(isMarked(first.bits, b.data)).toBe(false);
  });

  it('marks a 4 GiB log at an offset off a page boundary (its mapping is larger than one typed array)', async () => {
    const { c } = await setUp();
    for (const offset of [0, PAGE + 8]) {
      const log = logAt(2 ** 32, offset);
      startLogging(c, log);
      const r = read(c, offset === 0 ? 3 : 4, offset === 0 ? 0 : 1);
      expect(c.run(0, 1).size).toBe(1);
      expect(isMarked(log.bits, r.data)).toBe(true);
      expect(isMarked(log.bits, r.status)).toBe(true);
    }
  });

  it('SET_VRING_ENABLE 0 is answered once the requests in flight completed: Cloud Hypervisor pauses so, then takes its last log', async () => {
    // O_DIRECT reads from a disk-backed file stay in flight for a while (tmpfs would copy inline).
    dir = mkdtempSync(join(tmpdir(), 'kumo-dirtylog-'));
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    const N = 32;
    const LEN = 256 << 10;
    writeFileSync(img, randomBytes(N * LEN));
    child = await startBackend(`path=${img},socket=${sock},queue_size=128,direct=on,poll_queue=off`);
    const c = (client = await BlkVuClient.connect(sock, { queueSize: 128, memSize: MEM, logShmfd: true, ackEveryRequest: true }));
    const first = newLog();
    startLogging(c, first);
    const datas: number[] = [];
    for (let i = 0; i < N; i++) {
      const data = c.buf(LEN, PAGE);
      datas.push(data);
      c.add(0, VIRTIO_BLK_T_IN, (i * LEN) / 512, [], [{ addr: data, len: LEN }], i);
    }
    const q = c.queues[0];
    q.driver.publish();
    eventfdWrite(q.kick);
    // Until the back-end took them all (avail_event moves past them when it turns kicks back on) or one completed.
    const availEvent = q.layout.usedAddr + 4 + 8 * q.layout.size;
    const until = Date.now() + 5000;
    while (c.mem.readU16(availEvent) !== N && c.mem.readU16(q.layout.usedAddr + 2) === 0 && Date.now() < until) {
      // spin: the window between taking and completing is what is tested
    }
    // Cloud Hypervisor's pause, then its last pass: a new log, and the old one is read and sent.
    c.fe.setVringEnable(0, false);
    c.fe.setLogBase(newLog().fd, first.size);
    const lastPass = Uint8Array.from(first.bits);
    expect(c.mem.readU16(q.layout.usedAddr + 2)).toBe(N);
    expect(datas.filter((d) => !isMarked(lastPass, d))).toEqual([]);
    expect(isMarked(lastPass, q.layout.usedAddr)).toBe(true);
  });

  it('a log larger than its file ends that connection, and the back-end serves the next front-end', async () => {
    const { c, sock } = await setUp();
    const log = newLog(PAGE);
    expect(() => c.fe.setLogBase(log.fd, 16 * PAGE)).toThrow();
    c.close();
    client = await BlkVuClient.connect(sock, { queueSize: 128, memSize: MEM });
    const r = read(client, 4, 0);
    expect(client.run(0, 1).size).toBe(1);
    expect(client.mem.readU8(r.status)).toBe(VIRTIO_BLK_S_OK);
  });

  it('SET_LOG_BASE without LOG_SHMFD is refused and the connection goes on', async () => {
    dir = mkdtempSync(join('/dev/shm', 'kumo-dirtylog-'));
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(1 << 20));
    child = await startBackend(`path=${img},socket=${sock},queue_size=128`);
    const c = (client = await BlkVuClient.connect(sock, { queueSize: 128, memSize: MEM, ackEveryRequest: true }));
    const log = newLog();
    // Without LOG_SHMFD no reply of its own is owed: the ack asked for is a NACK.
    expect(() => c.fe.call(Request.SET_LOG_BASE, { kind: 'log', size: log.size, offset: 0 }, [log.fd])).toThrow(VhostUserNackError);
    const r = read(c, 4, 0);
    expect(c.run(0, 1).size).toBe(1);
    expect(c.mem.readU8(r.status)).toBe(VIRTIO_BLK_S_OK);
  });
});
