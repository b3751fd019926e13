import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, writeSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import {
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, encodeBlkHeader,
} from '../../protocol/virtio/index.js';
import { VIRTQ_DESC_F_NEXT } from '../../protocol/virtqueue/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite, pipe2, setNonBlocking } from '../../protocol/sys/fd.js';
import { sendMsg, unixConnect } from '../../protocol/sys/socket.js';

const SIZE = 1 << 20;

/** Descriptor indices of the chain added last (not yet published) on queue 0. */
function chainDescs(c: BlkVuClient): number[] {
  const q = c.queues[0].driver;
  const l = q.layout;
  const idx = (q as unknown as { availIdx: number }).availIdx;
  let d = c.mem.readU16(l.availAddr + 4 + 2 * ((idx - 1) & (l.size - 1)));
  const out = [d];
  while (c.mem.readU16(l.descAddr + d * 16 + 12) & VIRTQ_DESC_F_NEXT) {
    d = c.mem.readU16(l.descAddr + d * 16 + 14);
    out.push(d);
  }
  return out;
}

// direct=on too: requests off the O_DIRECT alignment take the pooled buffers, which must refuse the same way.
for (const direct of [false, true]) describe(`kumo-vhost-user-blk against hostile requests${direct ? ' (direct=on)' : ''}`, () => {
  let dir: string;
  let img: string;
  let sock: string;
  let initial: Buffer;
  let child: ChildProcess;
  let c: BlkVuClient;

  beforeAll(async () => {
    // O_DIRECT needs a disk file system (tmpfs may refuse it).
    dir = mkdtempSync(join(direct ? '/var/tmp' : tmpdir(), 'kumo-vub-h-'));
    img = join(dir, 'disk.raw');
    sock = join(dir, 'blk.sock');
    initial = randomBytes(SIZE);
    writeFileSync(img, initial);
    child = await startBackend(`path=${img},socket=${sock},queue_size=256,poll_queue=off,direct=${direct ? 'on' : 'off'}`);
    c = await BlkVuClient.connect(sock, { queueSize: 256, indirect: false });
  });
  afterAll(async () => {
    c?.close();
    if (child) await stopBackend(child);
    rmSync(dir, { recursive: true, force: true });
  });

  /** A plain read still works: the backend survived. */
  const alive = () => {
    const r = c.buf(512);
    const st = c.add(0, VIRTIO_BLK_T_IN, 7, [], [{ addr: r, len: 512 }], 999);
    c.run(0, 1);
    expect(c.mem.readU8(st)).toBe(VIRTIO_BLK_S_OK);
    expect(Buffer.from(c.mem.slice(r, 512)).equals(initial.subarray(7 * 512, 8 * 512))).toBe(true);
  };

  it('accepts a header split across descriptors', () => {
    const h = c.buf(16);
    c.mem.write(h, encodeBlkHeader({ type: VIRTIO_BLK_T_IN, ioprio: 0, sector: 3 }));
    const r = c.buf(512);
    const st = c.buf(1);
    c.addRaw(0, [{ addr: h, len: 5 }, { addr: h + 5, len: 11 }], [{ addr: r, len: 512 }, { addr: st, len: 1 }], 1);
    const used = c.run(0, 1);
    expect(used.get(1)).toBe(513);
    expect(c.mem.readU8(st)).toBe(VIRTIO_BLK_S_OK);
    expect(Buffer.from(c.mem.slice(r, 512)).equals(initial.subarray(1536, 2048))).toBe(true);
  });

  it('fails past-capacity, huge-sector, misaligned and over-segmented requests with IOERR', () => {
    const r = c.buf(8192);
    const sts = [
      c.add(0, VIRTIO_BLK_T_IN, SIZE / 512, [], [{ addr: r, len: 512 }], 1),
      c.add(0, VIRTIO_BLK_T_IN, SIZE / 512 - 1, [], [{ addr: r, len: 1024 }], 2),
      c.add(0, VIRTIO_BLK_T_OUT, 2 ** 50, [{ addr: r, len: 512 }], [], 3),
      c.add(0, VIRTIO_BLK_T_OUT, 0xffffffffff, [{ addr: r, len: 512 }], [], 4),
      c.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: r, len: 513 }], 5),
      c.add(0, VIRTIO_BLK_T_DISCARD, 0, [{ addr: r, len: 15 }], [], 6),
      // 200 data segments: more than seg_max
      c.add(0, VIRTIO_BLK_T_IN, 0, [], Array.from({ length: 200 }, (_, i) => ({ addr: r + (i % 16) * 512, len: 512 })), 7),
    ];
    c.run(0, 7);
    for (const s of sts) expect(c.mem.readU8(s)).toBe(VIRTIO_BLK_S_IOERR);
    alive();
  });

  it('drops chains without a status byte, fails those with a short header or a buffer outside memory with IOERR', () => {
    const h = c.buf(16);
    c.mem.write(h, encodeBlkHeader({ type: VIRTIO_BLK_T_OUT, ioprio: 0, sector: 0 }));
    const d = c.buf(512);
    c.mem.fill(d, 512, 0xee);
    // OUT without any writable byte: cannot report status, must not write either
    c.addRaw(0, [{ addr: h, len: 16 }, { addr: d, len: 512 }], [], 1);
    // 8-byte header with a status byte: IOERR
    const st2 = c.buf(1);
    c.addRaw(0, [{ addr: h, len: 8 }], [{ addr: st2, len: 1 }], 2);
    // data buffer beyond the end of guest memory
    const st3 = c.buf(1);
    c.mem.writeU8(st3, 0xff);
    c.addRaw(0, [{ addr: h, len: 16 }, { addr: d, len: 512 }], [{ addr: st3, len: 1 }], 3);
    const second = chainDescs(c)[1];
    c.mem.writeU32(c.queues[0].driver.layout.descAddr + second * 16 + 4, 0x7fff); // address high half
    // the same with the status byte outside too: nothing to answer through
    const st4 = c.buf(1);
    c.mem.writeU8(st4, 0xff);
    c.addRaw(0, [{ addr: h, len: 16 }, { addr: d, len: 512 }], [{ addr: st4, len: 1 }], 4);
    const status4 = chainDescs(c)[2];
    c.mem.writeU32(c.queues[0].driver.layout.descAddr + status4 * 16 + 4, 0x7fff);
    const used = c.run(0, 4);
    expect(used.get(1)).toBe(0);
    expect(c.mem.readU8(st2)).toBe(VIRTIO_BLK_S_IOERR);
    // An empty answer would leave the status byte as it was: a driver reusing its request (Linux) reads a stale OK.
    expect(used.get(3)).toBe(1);
    expect(c.mem.readU8(st3)).toBe(VIRTIO_BLK_S_IOERR);
    expect(used.get(4)).toBe(0);
    expect(c.mem.readU8(st4)).toBe(0xff);
    expect(readFileSync(img).equals(initial)).toBe(true);
    alive();
  });

  it('survives a descriptor loop', () => {
    const q = c.queues[0].driver;
    const h = c.buf(16);
    c.mem.write(h, encodeBlkHeader({ type: VIRTIO_BLK_T_IN, ioprio: 0, sector: 0 }));
    const r = c.buf(512);
    const st = c.buf(1);
    c.addRaw(0, [{ addr: h, len: 16 }], [{ addr: r, len: 512 }, { addr: st, len: 1 }], 1);
    // Corrupt the chain: make its last descriptor point back at its head.
    const layout = q.layout;
    const descs = chainDescs(c);
    const head = descs[0];
    const d = descs[descs.length - 1];
    c.mem.writeU16(layout.descAddr + d * 16 + 12, c.mem.readU16(layout.descAddr + d * 16 + 12) | VIRTQ_DESC_F_NEXT);
    c.mem.writeU16(layout.descAddr + d * 16 + 14, head);
    expect(descs.length).toBe(3);
    const used = c.run(0, 1);
    expect(used.get(1)).toBe(0);
    // restore the flag so the driver can reuse the descriptor
    c.mem.writeU16(layout.descAddr + d * 16 + 12, c.mem.readU16(layout.descAddr + d * 16 + 12) & ~VIRTQ_DESC_F_NEXT);
    alive();
  });
});

describe('kumo-vhost-user-blk against a front-end with broken kick and call fds', () => {
  /** A back-end on a fresh image for `body`, stopped and cleaned up after it. */
  async function withBackend(body: (sock: string, child: ChildProcess) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-vub-fds-'));
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(SIZE));
    const child = await startBackend(`path=${img},socket=${sock},queue_size=64`);
    try {
      await body(sock, child);
    } finally {
      await stopBackend(child);
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** GET_ID on queue 0 comes back OK. */
  const getId = (c: BlkVuClient, token: number): void => {
    const id = c.buf(20);
    const st = c.add(0, VIRTIO_BLK_T_GET_ID, 0, [], [{ addr: id, len: 20 }], token);
    c.run(0, 1, 3000);
    expect(c.mem.readU8(st)).toBe(VIRTIO_BLK_S_OK);
  };

  /** A well-behaved front-end after the hostile one is served. */
  const nextFrontEndServed = async (sock: string): Promise<void> => {
    const c2 = await BlkVuClient.connect(sock, { queueSize: 64 });
    getId(c2, 1);
    c2.close();
  };

  // A call fd must be an eventfd; one that is a full, blocking pipe used to park the queue worker in write() for
  // good: GET_VRING_BASE then timed out, and the ring stayed dead for every later front-end.
  it('still serves the ring, answers GET_VRING_BASE and serves the next front-end when the call fd blocks', () => withBackend(async (sock) => {
    const [r, w] = pipe2();
    try {
      const c = await BlkVuClient.connect(sock, { queueSize: 64 });
      setNonBlocking(w, true);
      for (;;) {
        try {
          writeSync(w, Buffer.alloc(65536));
        } catch {
          break; // EAGAIN: full
        }
      }
      setNonBlocking(w, false);
      c.fe.setVringCall(0, w);
      for (let k = 1; k <= 3; k++) getId(c, k);
      const t0 = Date.now();
      c.fe.getVringBase(0);
      expect(Date.now() - t0).toBeLessThan(3000);
      c.close();
      await nextFrontEndServed(sock);
    } finally {
      closeQuiet(r);
      closeQuiet(w);
    }
  }), 60_000);

  // Replies went out with a blocking sendmsg on the main thread: a front-end that queued requests and never read
  // froze the daemon (no next front-end, no SIGTERM) for as long as it kept the connection open.
  it('drops a front-end that stops reading its replies, and serves the next one', () => withBackend(async (sock) => {
    const fd = unixConnect(sock);
    try {
      const getFeatures = new Uint8Array(12);
      new DataView(getFeatures.buffer).setUint32(0, 1, true); // GET_FEATURES, version 1, no payload
      new DataView(getFeatures.buffer).setUint32(4, 1, true);
      const burst = Buffer.concat(Array.from({ length: 1000 }, () => getFeatures));
      let queued = 0;
      while (queued < 40_000 && sendMsg(fd, burst, [], true) > 0) queued += 1000;
      expect(queued).toBeGreaterThan(1000); // more replies than the socket holds
      await nextFrontEndServed(sock);
    } finally {
      closeQuiet(fd);
    }
  }), 60_000);

  // The spec fixes no order for a ring's restart; a front-end sending SET_VRING_KICK before SET_VRING_CALL had the
  // requests already queued served with no call fd, and the new call fd was never signalled: the driver slept for good.
  it('signals a call fd set after the ring was restarted and served', () => withBackend(async (sock) => {
    const c = await BlkVuClient.connect(sock, { queueSize: 64 });
    const q = c.queues[0];
    getId(c, 1);
    const base = c.fe.getVringBase(0);
    const statuses: number[] = [];
    for (let k = 0; k < 4; k++) statuses.push(c.add(0, VIRTIO_BLK_T_IN, 8 * k, [], [{ addr: c.buf(4096), len: 4096 }], 10 + k));
    q.driver.publish();
    eventfdWrite(q.kick);
    const call = eventfd();
    try {
      c.fe.setVringBase(0, base);
      c.fe.setVringKick(0, q.kick);
      const t0 = Date.now();
      while (q.driver.takeUsed().length === 0 && Date.now() - t0 < 5000) await new Promise((res) => setTimeout(res, 10));
      c.fe.setVringCall(0, call);
      c.fe.setVringEnable(0, true);
      await new Promise((res) => setTimeout(res, 300));
      expect(eventfdRead(call)).toBeGreaterThan(0);
      expect(statuses.map((s) => c.mem.readU8(s))).toEqual([0, 0, 0, 0]);
    } finally {
      closeQuiet(call);
      c.close();
    }
  }), 60_000);

  // QEMU removes and adds a region again to resize it; libvhost-user remaps the rings that lived in it.
  it('serves a ring again once the region it lives in is removed and added back', () => withBackend(async (sock) => {
    const c = await BlkVuClient.connect(sock, { queueSize: 64 });
    getId(c, 1);
    const r = c.mem.regions[0];
    const region = { guestAddr: r.guestAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.fdOffset };
    c.fe.removeMemRegion(region);
    c.fe.addMemRegion(region, r.fd);
    getId(c, 2);
    c.close();
  }), 60_000);

  // A pipe end whose other end is gone: epoll reports HUP (read end) or ERR (write end) on every wait.
  for (const end of ['read', 'write'] as const) {
    it(`neither spins nor loses the worker on a kick fd that is the ${end} end of a closed pipe`, () => withBackend(async (sock, child) => {
      const c = await BlkVuClient.connect(sock, { queueSize: 64 });
      const [r, w] = pipe2();
      c.fe.setVringKick(0, end === 'read' ? r : w);
      closeQuiet(r);
      closeQuiet(w);
      const ticks = () => {
        const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ');
        return Number(f[11]) + Number(f[12]);
      };
      const t0 = ticks();
      await new Promise((res) => setTimeout(res, 1000));
      expect(ticks() - t0).toBeLessThan(30); // < 0.3 s of CPU in 1 s (it spun at 1 s before)
      c.fe.getVringBase(0);
      c.close();
      await nextFrontEndServed(sock);
      expect(child.exitCode).toBe(null);
    }), 60_000);
  }
});
