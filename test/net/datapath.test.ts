import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { close, read, write } from '../../protocol/sys/fd.js';
import { ftruncate, memfdCreate } from '../../protocol/sys/mem.js';
import { DeviceQueue, DriverQueue, GuestAllocator, compactLayout } from '../../protocol/virtqueue/index.js';
import { COUNTER, counterBuffer, counterView } from '../../backends/vhost-user-net/counters.js';
import { PassResult } from '../../backends/vhost-user-net/net-queue.js';
import { RxPath } from '../../backends/vhost-user-net/rx.js';
import { TxPath, type TxOptions } from '../../backends/vhost-user-net/tx.js';
import { fakeTap } from './fake-tap.js';

const MiB = 1 << 20;
const HDR = 12;

interface Env {
  mem: GuestMemory;
  alloc: GuestAllocator;
  driver: DriverQueue<number>;
  device: DeviceQueue;
  tap: number;
  host: number;
  c: Float64Array;
}

function makeEnv(size = 16): Env {
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 4 * MiB }]);
  const alloc = new GuestAllocator(0x1000, 4 * MiB - 0x1000);
  const base = alloc.allocOrThrow(64 * 1024, 4096);
  const layout = compactLayout(base, size);
  const driver = new DriverQueue<number>(mem, layout, {});
  const device = new DeviceQueue(mem, layout, { eventIdx: false });
  const [tap, host] = fakeTap();
  return { mem, alloc, driver, device, tap, host, c: counterView(counterBuffer(1), 0) };
}

const txOpts: TxOptions = { hdrLen: HDR, maxFrame: 1518, csum: true, tso4: true, tso6: true, ecn: false, ufo: false };

function frame(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}

describe('net data path (fake TAP)', () => {
  let e: Env;
  beforeEach(() => {
    e = makeEnv();
  });
  afterEach(() => {
    close(e.tap);
    close(e.host);
    e.mem.close();
  });

  it('RX spreads a frame over mergeable buffers and fills num_buffers', () => {
    const bufs: number[] = [];
    for (let i = 0; i < 4; i++) {
      const a = e.alloc.allocOrThrow(1024);
      bufs.push(a);
      e.driver.add([], [{ addr: a, len: 1024 }], i);
    }
    e.driver.publish();
    const rx = new RxPath(e.tap, e.c);
    rx.configure({ mergeable: true, hdrLen: HDR, maxFrame: 2048, queueSize: 16 });
    const pkt = new Uint8Array(HDR + 1500);
    pkt.set(frame(1500, 3), HDR);
    expect(write(e.host, pkt)).toBe(pkt.length);
    const r = rx.run(e.device, e.mem, 64);
    expect(r.result).toBe(PassResult.Drained);
    expect(r.published).toBe(2);
    const used = e.driver.takeUsed();
    expect(used.map((u) => u.len)).toEqual([1024, HDR + 1500 - 1024]);
    const got = new Uint8Array(HDR + 1500);
    e.mem.read(bufs[used[0].token], got.subarray(0, 1024));
    e.mem.read(bufs[used[1].token], got.subarray(1024));
    expect(got[10] | (got[11] << 8)).toBe(2);
    expect(got.subarray(HDR)).toEqual(frame(1500, 3));
    // The two gathered-but-unused chains are still held; stopping the ring gives them back.
    expect(rx.heldChains).toBe(2);
    const before = e.device.nextAvailIdx;
    rx.release(e.device);
    expect(e.device.nextAvailIdx).toBe(before - 2);
    expect(e.c[COUNTER.rxFrames]).toBe(1);
  });

  it('RX drops a frame bigger than the buffers gathered for it (counted), never hands the guest a cut one, and delivers the next', () => {
    // The TAP copies what fits and drops the rest (as this datagram socket does): e.g. its MTU raised since start.
    for (const mergeable of [true, false]) {
      const env = makeEnv();
      const bufs: number[] = [];
      for (let i = 0; i < 2; i++) {
        const a = env.alloc.allocOrThrow(1024);
        bufs.push(a);
        env.driver.add([], [{ addr: a, len: 1024 }], i);
      }
      env.driver.publish();
      const rx = new RxPath(env.tap, env.c);
      rx.configure({ mergeable, hdrLen: HDR, maxFrame: 2048, queueSize: 16 });
      const big = new Uint8Array(HDR + 3000);
      big.set(frame(3000, 5), HDR);
      const small = new Uint8Array(HDR + 100);
      small.set(frame(100, 6), HDR);
      write(env.host, big);
      write(env.host, small);
      const r = rx.run(env.device, env.mem, 64);
      expect(r.published).toBe(1);
      expect(env.driver.takeUsed().map((u) => [u.token, u.len])).toEqual([[0, HDR + 100]]);
      const got = new Uint8Array(100);
      env.mem.read(bufs[0] + HDR, got);
      expect(got).toEqual(frame(100, 6));
      expect(env.c[COUNTER.rxOversized]).toBe(1);
      expect(env.c[COUNTER.rxDropped]).toBe(1);
      expect(env.c[COUNTER.rxFrames]).toBe(1);
      close(env.tap);
      close(env.host);
      env.mem.close();
    }
  });

  it('RX delivers frames while the guest has fewer mergeable bytes posted than the largest frame, reading aside what does not fit yet', () => {
    // Linux refills only once half the ring is free: with a small ring and GSO (64 KiB frames) it may hold far less.
    const post = (n: number, token0: number): number[] => {
      const bufs: number[] = [];
      for (let i = 0; i < n; i++) {
        const a = e.alloc.allocOrThrow(1536);
        bufs.push(a);
        e.driver.add([], [{ addr: a, len: 1536 }], token0 + i);
      }
      e.driver.publish();
      return bufs;
    };
    const bufs = post(3, 0);
    const rx = new RxPath(e.tap, e.c);
    rx.configure({ mergeable: true, hdrLen: HDR, maxFrame: HDR + 65550, queueSize: 16 });
    const pkt = (len: number, seed: number) => {
      const p = new Uint8Array(HDR + len);
      p.set(frame(len, seed), HDR);
      return p;
    };
    write(e.host, pkt(100, 1));
    write(e.host, pkt(200, 2));
    write(e.host, pkt(3000, 3));
    let r = rx.run(e.device, e.mem, 64);
    expect(r.result).toBe(PassResult.NoBuffers); // the 3000-byte frame waits for a second buffer
    let used = e.driver.takeUsed();
    expect(used.map((u) => [u.token, u.len])).toEqual([[0, HDR + 100], [1, HDR + 200]]);
    const got = new Uint8Array(200);
    e.mem.read(bufs[1] + HDR, got);
    expect(got).toEqual(frame(200, 2));
    expect(e.mem.readU16(bufs[1] + 10)).toBe(1);
    const more = post(2, 3);
    write(e.host, pkt(50, 4));
    r = rx.run(e.device, e.mem, 64);
    expect(r.result).toBe(PassResult.NoBuffers); // every buffer used
    used = e.driver.takeUsed();
    expect(used.map((u) => [u.token, u.len])).toEqual([[2, 1536], [3, HDR + 3000 - 1536], [4, HDR + 50]]);
    const big = new Uint8Array(HDR + 3000);
    e.mem.read(bufs[2], big.subarray(0, 1536));
    e.mem.read(more[0], big.subarray(1536));
    expect(big[10] | (big[11] << 8)).toBe(2);
    expect(big.subarray(HDR)).toEqual(frame(3000, 3));
    expect(e.c[COUNTER.rxFrames]).toBe(4);
    expect(e.c[COUNTER.rxDropped]).toBe(0);
  });

  it('RX reports NoBuffers when the ring is empty and resumes once buffers arrive', () => {
    const rx = new RxPath(e.tap, e.c);
    rx.configure({ mergeable: true, hdrLen: HDR, maxFrame: 1526, queueSize: 16 });
    const pkt = new Uint8Array(HDR + 60);
    pkt.set(frame(60, 1), HDR);
    write(e.host, pkt);
    expect(rx.run(e.device, e.mem, 64).result).toBe(PassResult.NoBuffers);
    const a = e.alloc.allocOrThrow(2048);
    e.driver.add([], [{ addr: a, len: 2048 }], 0);
    e.driver.publish();
    const r = rx.run(e.device, e.mem, 64);
    expect(r.published).toBe(1);
    const [u] = e.driver.takeUsed();
    expect(u.len).toBe(HDR + 60);
    expect(e.mem.readU16(a + 10)).toBe(1);
  });

  it('TX writes header + frame from scattered guest segments', () => {
    const h = e.alloc.allocOrThrow(HDR);
    const f1 = e.alloc.allocOrThrow(30);
    const f2 = e.alloc.allocOrThrow(34);
    const fr = frame(64, 9);
    e.mem.fill(h, HDR);
    e.mem.write(f1, fr.subarray(0, 30));
    e.mem.write(f2, fr.subarray(30));
    e.driver.add([{ addr: h, len: HDR }, { addr: f1, len: 30 }, { addr: f2, len: 34 }], [], 1);
    e.driver.publish();
    const tx = new TxPath(e.tap, e.c);
    tx.configure(txOpts);
    const r = tx.run(e.device, e.mem, 64);
    expect(r).toEqual({ result: PassResult.Drained, published: 1 });
    const got = new Uint8Array(2048);
    expect(read(e.host, got)).toBe(HDR + 64);
    expect(got.subarray(HDR, HDR + 64)).toEqual(fr);
    expect(e.c[COUNTER.txFrames]).toBe(1);
  });

  it('TX drops hostile chains, bad headers and oversized frames, counts them, and keeps forwarding', () => {
    const add = (hdr: Uint8Array, len: number) => {
      const a = e.alloc.allocOrThrow(HDR + len);
      e.mem.write(a, hdr);
      e.mem.write(a + HDR, frame(len, 5));
      e.driver.add([{ addr: a, len: HDR + len }], [], 0);
    };
    const hdr = (flags: number, gso: number, csumStart = 0, csumOff = 0) => {
      const b = new Uint8Array(HDR);
      b[0] = flags;
      b[1] = gso;
      b[6] = csumStart;
      b[8] = csumOff;
      return b;
    };
    add(hdr(0, 0), 4000); // oversized without GSO
    add(hdr(0, 7), 100); // unknown gso type
    add(hdr(0x10, 0), 100); // unknown flag
    add(hdr(1, 0, 250, 16), 100); // csum beyond the frame
    add(hdr(0, 3), 100); // UFO not negotiated
    add(hdr(0, 0), 10); // runt
    // A descriptor pointing outside guest memory.
    e.driver.add([{ addr: 3 * MiB, len: 64 }], [], 0);
    e.mem.writeU64(e.driver.layout.descAddr + 16 * 6, 64 * MiB); // rewrite desc 6's address behind the driver's back
    add(hdr(0, 0), 200); // a good one at the end
    e.driver.publish();
    const tx = new TxPath(e.tap, e.c);
    tx.configure(txOpts);
    const r = tx.run(e.device, e.mem, 64);
    expect(r.published).toBe(8);
    expect(e.driver.takeUsed().length).toBe(8);
    expect(e.c[COUNTER.txOversized]).toBe(1);
    expect(e.c[COUNTER.txBadHeader]).toBe(4);
    expect(e.c[COUNTER.txRunt]).toBe(1);
    expect(e.c[COUNTER.txBadChain]).toBe(1);
    expect(e.c[COUNTER.txDropped]).toBe(7);
    expect(e.c[COUNTER.txFrames]).toBe(1);
    const got = new Uint8Array(4096);
    expect(read(e.host, got)).toBe(HDR + 200);
    expect(read(e.host, got)).toBe(-1);
  });

  it('RX returns chains without room for a header as used with length 0', () => {
    const a = e.alloc.allocOrThrow(8);
    e.driver.add([], [{ addr: a, len: 8 }], 0);
    const b = e.alloc.allocOrThrow(2048);
    e.driver.add([], [{ addr: b, len: 2048 }], 1);
    e.driver.publish();
    const rx = new RxPath(e.tap, e.c);
    rx.configure({ mergeable: false, hdrLen: HDR, maxFrame: 1526, queueSize: 16 });
    const pkt = new Uint8Array(HDR + 100);
    write(e.host, pkt);
    rx.run(e.device, e.mem, 64);
    const used = e.driver.takeUsed();
    expect(used.map((u) => [u.token, u.len])).toEqual([[0, 0], [1, HDR + 100]]);
    expect(e.c[COUNTER.rxBadChain]).toBe(1);
  });
});

describe('queue pair back-pressure (fake TAP + epoll)', () => {
  it('stops polling the TAP while the RX ring has no buffers and resumes on the RX kick', async () => {
    const { Epoll } = await import('../../protocol/sys/epoll.js');
    const { QueuePair } = await import('../../backends/vhost-user-net/queue-pair.js');
    const { logger } = await import('../../protocol/log.js');
    const e = makeEnv();
    const ep = new Epoll(8);
    const TAP = 0x10000;
    const pair = new QueuePair({ tapFd: e.tap, epoll: ep, tapToken: TAP, reschedToken: TAP + 1, counters: e.c, memory: () => e.mem, log: logger('test') });
    pair.configure(
      { mergeable: true, hdrLen: HDR, maxFrame: 1526, queueSize: 16 },
      txOpts,
    );
    let notified = 0;
    const ring = { queue: e.device, enabled: true, notify: () => notified++ };
    pair.startRx(ring);
    const pkt = new Uint8Array(HDR + 60);
    write(e.host, pkt);
    // Ring empty: the pair drops EPOLLIN on the TAP, so a pending frame does not wake the worker.
    const ready = () => {
      const n = ep.wait(0);
      return Array.from(ep.tokens.subarray(0, n));
    };
    expect(ready()).not.toContain(TAP);
    expect(e.c[COUNTER.tapPauses]).toBeGreaterThan(0);
    const a = e.alloc.allocOrThrow(2048);
    e.driver.add([], [{ addr: a, len: 2048 }], 0);
    e.driver.publish();
    pair.rxKick();
    expect(e.driver.takeUsed().map((u) => u.len)).toEqual([HDR + 60]);
    expect(notified).toBe(1);
    // Buffers left: EPOLLIN is back, so the next frame wakes the worker.
    e.driver.add([], [{ addr: a, len: 2048 }], 0);
    e.driver.publish();
    pair.rxKick();
    write(e.host, pkt);
    expect(ready()).toContain(TAP);
    pair.onFd(TAP, 1);
    expect(e.driver.takeUsed().length).toBe(1);
    pair.close();
    ep.close();
    close(e.tap);
    close(e.host);
    e.mem.close();
  });
});

describe('net RX across memory table changes', () => {
  it('writes a held RX chain through its guest addresses after REM_MEM_REG/ADD_MEM_REG, never the old mapping', () => {
    // ADD_MEM_REG / REM_MEM_REG change the back-end's GuestMemory in place (QEMU sends them when it lays memory out
    // again). A chain popped before the change must not be written through the host address its buffer had then:
    // that range is unmapped, or (as here) another region was mapped there since.
    const B = 8 * MiB;
    const C = 32 * MiB;
    const USER = 0x7000_0000_0000;
    const region = (guestAddr: number, size: number) => {
      const fd = memfdCreate(`rx-remap-${guestAddr}`);
      ftruncate(fd, size);
      return { guestAddr, size, fd, fdOffset: 0, userAddr: USER + guestAddr };
    };
    const mem = GuestMemory.fromRegions([region(0, 4 * MiB), region(B, MiB)]);
    const layout = compactLayout(0x1000, 16);
    const driver = new DriverQueue<number>(mem, layout, {});
    const device = new DeviceQueue(mem, layout, { eventIdx: false });
    const [tap, host] = fakeTap();
    const c = counterView(counterBuffer(1), 0);
    try {
      const rx = new RxPath(tap, c);
      rx.configure({ mergeable: false, hdrLen: HDR, maxFrame: 1526, queueSize: 16 });
      driver.add([], [{ addr: B + 0x100, len: 2048 }], 0);
      driver.publish();
      rx.run(device, mem, 64); // the TAP is empty: the chain is popped and held
      expect(rx.heldChains).toBe(1);
      const oldB = mem.regions.find((r) => r.guestAddr === B)!.ptr;
      mem.removeRegion(B, MiB, USER + B);
      mem.addRegion(region(C, MiB)); // mmap hands out the range B had (checked below)
      mem.addRegion(region(B, MiB));
      const reused = mem.regions.find((r) => r.guestAddr === C)!.ptr === oldB;
      const pkt = new Uint8Array(HDR + 100).fill(0xab);
      write(host, pkt);
      rx.run(device, mem, 64);
      expect(driver.takeUsed().map((u) => [u.token, u.len])).toEqual([[0, HDR + 100]]);
      expect(mem.slice(B + 0x100 + HDR, 100).every((b) => b === 0xab)).toBe(true);
      expect(mem.slice(C + 0x100, HDR + 100).every((b) => b === 0)).toBe(true);
      // (Where mmap put C elsewhere, the old range is unmapped: the frame was dropped EFAULT instead.)
      if (!reused) expect(c[COUNTER.rxDropped]).toBe(0);
    } finally {
      close(tap);
      close(host);
      mem.close();
    }
  });
});
