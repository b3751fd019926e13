import { afterAll, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import {
  ChainError,
  compactLayout,
  DeviceQueue,
  DriverQueue,
  GuestAllocator,
  GuestAllocatorError,
  readFromChain,
  ringSizes,
  validateLayout,
  VirtqueueError,
  writeToChain,
  type Segment,
} from '../../protocol/virtqueue/index.js';
import { usedElem, usedIdx } from './virtqueue-helpers.js';

describe('layout', () => {
  it('computes ring sizes and a compact aligned layout', () => {
    expect(ringSizes(256)).toEqual({ desc: 4096, avail: 518, used: 2054 });
    const l = compactLayout(0x10000, 256);
    expect(l).toEqual({ size: 256, descAddr: 0x10000, availAddr: 0x11000, usedAddr: 0x11208, end: 0x11208 + 2054 });
    expect(() => validateLayout(l)).not.toThrow();
  });
  it.each([
    [{ size: 0, descAddr: 0, availAddr: 0, usedAddr: 0 }],
    [{ size: 65536, descAddr: 0, availAddr: 0, usedAddr: 0 }],
    [{ size: 100, descAddr: 0, availAddr: 0, usedAddr: 0 }],
    [{ size: 8, descAddr: 0x18, availAddr: 0, usedAddr: 0 }],
    [{ size: 8, descAddr: 0, availAddr: 1, usedAddr: 0 }],
    [{ size: 8, descAddr: 0, availAddr: 0, usedAddr: 6 }],
    [{ size: 8, descAddr: -16, availAddr: 0, usedAddr: 0 }],
  ])('refuses %o', (l) => {
    expect(() => validateLayout(l)).toThrow(VirtqueueError);
  });
});

describe('GuestAllocator', () => {
  it('allocates aligned blocks, coalesces frees, reports exhaustion', () => {
    const a = new GuestAllocator(0x1000, 0x1000);
    const x = a.alloc(10, 16)!;
    const y = a.alloc(100, 64)!;
    const z = a.alloc(0x1000);
    expect(x).toBe(0x1000);
    expect(y % 64).toBe(0);
    expect(y).toBeGreaterThanOrEqual(x + 10);
    expect(z).toBeNull();
    expect(() => a.allocOrThrow(0x1000)).toThrow(GuestAllocatorError);
    a.free(x);
    a.free(y);
    expect(a.available).toBe(0x1000);
    expect(a.alloc(0x1000)).toBe(0x1000);
    expect(() => a.free(0x1234)).toThrow(GuestAllocatorError);
    expect(() => a.alloc(0)).toThrow(GuestAllocatorError);
    expect(() => a.alloc(8, 3)).toThrow(GuestAllocatorError);
  });
});

describe('driver ↔ device round trip', () => {
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }, { guestAddr: 0x10_0000_0000, size: 1 << 20 }]);
  afterAll(() => mem.close());

  for (const indirect of [false, true]) {
    for (const eventIdx of [false, true]) {
      it(`indirect=${indirect} eventIdx=${eventIdx}: chains, data and tokens survive the trip across index wrap`, () => {
        const size = 8;
        const layout = compactLayout(0, size);
        const alloc = new GuestAllocator(0x8000, 0x8000);
        const bufs = new GuestAllocator(0x10_0000_0000, 1 << 20);
        const drv = new DriverQueue<number>(mem, layout, { eventIdx, indirect: indirect ? alloc : undefined });
        const dev = new DeviceQueue(mem, layout, { eventIdx });
        let sent = 0;
        let completed = 0;
        const inflight = new Map<number, { req: Segment[]; resp: Segment[]; payload: number }>();
        const bad: string[] = [];
        // 70k requests: the 16-bit avail/used indices wrap at least once.
        const TOTAL = 70_000;
        while (completed < TOTAL) {
          // Driver: fill the ring.
          while (sent < TOTAL) {
            const nReq = 1 + (sent % 3);
            const req = Array.from({ length: nReq }, () => ({ addr: bufs.allocOrThrow(8), len: 8 }));
            const resp = sent % 4 === 0 ? [] : [{ addr: bufs.allocOrThrow(4), len: 4 }];
            for (const [i, s] of req.entries()) mem.writeU32(s.addr, sent + i);
            const head = drv.add(req, resp, sent);
            if (head === null) {
              for (const s of [...req, ...resp]) bufs.free(s.addr);
              break;
            }
            inflight.set(sent, { req, resp, payload: sent });
            sent++;
          }
          drv.publish();
          // Device: serve everything.
          let c;
          let served = 0;
          while ((c = dev.pop()) !== null) {
            const data = new Uint8Array(c.readableLength);
            if (readFromChain(mem, c.readable, 0, data) !== c.readableLength) bad.push(`short read ${c.head}`);
            const first = new DataView(data.buffer).getUint32(0, true);
            const reply = new Uint8Array(4);
            new DataView(reply.buffer).setUint32(0, first * 2, true);
            const written = writeToChain(mem, c.writable, 0, reply);
            dev.pushUsed(c.head, written);
            served++;
          }
          dev.publishUsed();
          if (served === 0) throw new Error('device found nothing to serve');
          // Driver: collect.
          for (const u of drv.takeUsed()) {
            const rec = inflight.get(u.token);
            if (!rec) {
              bad.push(`unknown token ${u.token}`);
              continue;
            }
            if (u.len !== (rec.resp.length ? 4 : 0)) bad.push(`len ${u.len} for ${u.token}`);
            if (rec.resp.length && mem.readU32(rec.resp[0].addr) !== u.token * 2) bad.push(`reply for ${u.token}`);
            for (const s of [...rec.req, ...rec.resp]) bufs.free(s.addr);
            inflight.delete(u.token);
            completed++;
          }
        }
        expect(bad.slice(0, 5)).toEqual([]);
        expect(drv.freeCount).toBe(size);
        expect(drv.inFlight).toBe(0);
        // Returned tables are kept for reuse; given back, the pool is whole again (none leaked).
        drv.freeSpareTables();
        expect(alloc.available).toBe(0x8000);
        expect(dev.nextAvailIdx).toBe(TOTAL & 0xffff);
        expect(usedIdx(mem, layout)).toBe(TOTAL & 0xffff);
      });
    }
  }

  it('add() returns null when the ring is full and indirect saves descriptors', () => {
    const layout = compactLayout(0, 4);
    const drv = new DriverQueue<string>(mem, layout);
    const seg = (a: number) => ({ addr: 0x20000 + a * 16, len: 16 });
    expect(drv.add([seg(0), seg(1), seg(2)], [], 'a')).not.toBeNull();
    expect(drv.add([seg(3)], [seg(4)], 'b')).toBeNull();
    expect(drv.freeCount).toBe(1);
    const ind = new DriverQueue<string>(mem, compactLayout(0x4000, 4), { indirect: new GuestAllocator(0x30000, 4096) });
    for (let i = 0; i < 4; i++) expect(ind.add([seg(0), seg(1)], [seg(2)], `x${i}`)).not.toBeNull();
    expect(ind.add([seg(0)], [], 'full')).toBeNull();
  });

  it('indirect tables come back for reuse, and spares of another size are given back when the pool runs out', () => {
    const layout = compactLayout(0x8000, 8);
    // Room for two 3-descriptor tables (48 bytes each) and 32 bytes more.
    const pool = new GuestAllocator(0x30000, 128);
    const drv = new DriverQueue<string>(mem, layout, { indirect: pool });
    const dev = new DeviceQueue(mem, layout, { eventIdx: false });
    const seg = (a: number) => ({ addr: 0x20000 + a * 16, len: 16 });
    const seen: string[] = [];
    const serveAll = (): string[] => {
      drv.publish();
      for (let c = dev.pop(); c !== null; c = dev.pop()) {
        seen.push(`${c.readable.map((r) => r.addr - 0x20000).join(',')}/${c.writable.map((w) => w.addr - 0x20000).join(',')}`);
        dev.pushUsed(c.head, 0);
      }
      dev.publishUsed();
      return drv.takeUsed().map((u) => u.token);
    };
    drv.add([seg(0), seg(1)], [seg(2)], 'a');
    drv.add([seg(3), seg(4)], [seg(5)], 'b');
    expect(pool.available).toBe(32);
    expect(serveAll()).toEqual(['a', 'b']);
    // The same size again: the returned tables serve it, the allocator is not asked.
    expect(drv.add([seg(0), seg(1)], [seg(2)], 'c')).not.toBeNull();
    expect(pool.available).toBe(32);
    expect(serveAll()).toEqual(['c']);
    // A 4-descriptor table fits only once the spare 3-descriptor ones are freed: still one descriptor of the ring.
    const before = drv.freeCount;
    expect(drv.add([seg(0), seg(1), seg(2)], [seg(3)], 'd')).not.toBeNull();
    expect(drv.freeCount).toBe(before - 1);
    expect(serveAll()).toEqual(['d']);
    // What the device read through each (reused) table is what was added last.
    expect(seen).toEqual(['0,16/32', '48,64/80', '0,16/32', '0,16,32/48']);
  });

  it('driver refuses segments outside memory and empty chains', () => {
    const drv = new DriverQueue(mem, compactLayout(0, 4));
    expect(() => drv.add([{ addr: 1 << 20, len: 1 }], [], 0)).toThrow(VirtqueueError);
    expect(() => drv.add([], [], 0)).toThrow(VirtqueueError);
  });

  it('driver refuses a used id that is not in flight', () => {
    const layout = compactLayout(0, 4);
    const drv = new DriverQueue(mem, layout);
    const dev = new DeviceQueue(mem, layout, { eventIdx: false });
    dev.pushUsed(2, 0);
    dev.publishUsed();
    expect(() => drv.takeUsed()).toThrow(/not in flight/);
  });

  it('driver refuses a used length larger than the writable part', () => {
    const layout = compactLayout(0, 4);
    const drv = new DriverQueue(mem, layout);
    const dev = new DeviceQueue(mem, layout, { eventIdx: false });
    drv.add([{ addr: 0x20000, len: 16 }], [{ addr: 0x20100, len: 8 }], 0);
    drv.publish();
    dev.pushUsed(dev.pop()!.head, 9);
    dev.publishUsed();
    expect(() => drv.takeUsed()).toThrow(/more bytes written/);
  });

  it('pushUsed writes elements that only become visible on publishUsed', () => {
    const layout = compactLayout(0, 4);
    const drv = new DriverQueue<string>(mem, layout);
    const dev = new DeviceQueue(mem, layout, { eventIdx: false });
    drv.add([], [{ addr: 0x20000, len: 16 }], 'a');
    drv.add([], [{ addr: 0x20010, len: 16 }], 'b');
    drv.publish();
    const a = dev.pop()!;
    const b = dev.pop()!;
    expect(dev.pop()).toBeNull();
    dev.pushUsed(b.head, 7);
    dev.pushUsed(a.head, 3);
    expect(usedIdx(mem, layout)).toBe(0);
    expect(drv.takeUsed()).toEqual([]);
    dev.publishUsed();
    expect(usedIdx(mem, layout)).toBe(2);
    expect(usedElem(mem, layout, 0)).toEqual({ id: b.head, len: 7 });
    expect(drv.takeUsed().map((u) => [u.token, u.len])).toEqual([['b', 7], ['a', 3]]);
    expect(() => dev.pushUsed(4, 0)).toThrow(VirtqueueError);
    expect(() => dev.pushUsed(0, 2 ** 32)).toThrow(VirtqueueError);
  });

  it('a new DeviceQueue resumes from the used index in memory and a given nextAvailIdx (reconnect)', () => {
    const layout = compactLayout(0, 4);
    const drv = new DriverQueue<number>(mem, layout);
    let dev = new DeviceQueue(mem, layout, { eventIdx: false });
    for (let i = 0; i < 3; i++) drv.add([{ addr: 0x20000 + 16 * i, len: 16 }], [], i);
    drv.publish();
    const c = dev.pop()!;
    dev.pushUsed(c.head, 0);
    dev.publishUsed();
    const base = dev.nextAvailIdx;
    dev = new DeviceQueue(mem, layout, { eventIdx: false });
    dev.nextAvailIdx = base;
    expect(dev.nextUsedIdx).toBe(1);
    expect(dev.pop()?.readable[0].addr).toBe(0x20010);
  });

  it('undoPop() hands chains back to be popped again', () => {
    const layout = compactLayout(0, 4);
    const drv = new DriverQueue<number>(mem, layout, { eventIdx: true });
    const dev = new DeviceQueue(mem, layout, { eventIdx: true });
    drv.add([{ addr: 0x20000, len: 16 }], [], 1);
    drv.add([{ addr: 0x20010, len: 16 }], [], 2);
    drv.publish();
    const a = dev.pop()!;
    const b = dev.pop()!;
    dev.undoPop(1);
    expect(dev.pop()?.head).toBe(b.head);
    dev.undoPop(2);
    expect(dev.pop()?.head).toBe(a.head);
    expect(dev.nextAvailIdx).toBe(1);
    expect(() => dev.undoPop(5)).toThrow(VirtqueueError);
  });
});

describe('memory table changes under a live queue', () => {
  it('keeps working after an unrelated region is removed and refuses (not crashes) when the ring region goes', () => {
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }, { guestAddr: 1 << 30, size: 1 << 20 }, { guestAddr: 2 ** 31, size: 1 << 20 }]);
    try {
      const layout = compactLayout(1 << 30, 8);
      const drv = new DriverQueue<number>(mem, layout);
      const dev = new DeviceQueue(mem, layout, { eventIdx: true });
      drv.add([{ addr: 0x1000, len: 16 }], [], 1);
      drv.publish();
      const r0 = mem.regions[0];
      mem.removeRegion(r0.guestAddr, r0.size, r0.userAddr); // unmaps the buffers' region
      expect(() => dev.pop()).toThrow(ChainError); // the chain's buffer is gone: refused, not read
      dev.pushUsed(0, 0);
      dev.publishUsed();
      expect(drv.takeUsed()).toEqual([{ head: 0, token: 1, len: 0 }]);
      const r2 = mem.regions.find((r) => r.guestAddr === 2 ** 31)!;
      mem.removeRegion(r2.guestAddr, r2.size, r2.userAddr);
      expect(dev.pop()).toBeNull(); // ring views re-taken, still valid
      const r1 = mem.regions.find((r) => r.guestAddr === 1 << 30)!;
      mem.removeRegion(r1.guestAddr, r1.size, r1.userAddr);
      expect(() => dev.pop()).toThrow(VirtqueueError);
      expect(() => dev.publishUsed()).not.toThrow(); // nothing to publish
      expect(() => dev.enableNotifications()).toThrow(VirtqueueError);
    } finally {
      mem.close();
    }
  });
});
