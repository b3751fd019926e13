import { afterEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { eventfdWrite } from '../../protocol/sys/fd.js';
import { startTsWorker } from '../../vmm/vcpu/ts-worker.js';
import { compactLayout, DriverQueue } from '../../protocol/virtqueue/index.js';
import { buildPlatform, type Platform } from '../../vmm/devices/platform.js';
import { MSI_GSI_BASE } from '../../vmm/devices/platform-layout.js';
import { SharedArena } from '../../vmm/devices/shared-state.js';
import type { PlatformEvent } from '../../vmm/devices/types.js';
import { VirtioActivator } from '../../vmm/virtio/activation.js';
import { VirtioConsole } from '../../vmm/virtio/console.js';
import { EventLoop } from '../../vmm/virtio/event-loop.js';
import { VirtioRng } from '../../vmm/virtio/rng.js';
import { CountingIrq, le, readLe, RecordingRoutes } from './helpers.js';

const GiB = 2 ** 30;

function build(sab = new SharedArrayBuffer(1 << 20)) {
  const events: PlatformEvent[] = [];
  const irqs = new Map<number, CountingIrq>();
  const routes = new RecordingRoutes();
  const out: number[] = [];
  const p = buildPlatform({
    arena: new SharedArena(sab),
    vcpus: 2,
    memBelow4g: GiB,
    memAbove4g: 0,
    serialOutput: (b) => out.push(...b),
    events: (e) => events.push(e),
    irq: (gsi) => {
      const i = new CountingIrq();
      irqs.set(gsi, i);
      return i;
    },
    routes,
    virtio: [new VirtioRng(), new VirtioConsole((b) => out.push(...b))],
  });
  return { p, events, irqs, routes, out, sab };
}

/** Config access helpers over the buses, as a guest would do them. */
function cfg(p: Platform) {
  const cf8 = (slot: number, reg: number) => p.pio.write(0xcf8, le(0x8000_0000 | (slot << 11) | (reg & 0xfc), 4));
  return {
    io32(slot: number, reg: number): number {
      cf8(slot, reg);
      const d = new Uint8Array(4);
      p.pio.read(0xcfc, d);
      return readLe(d);
    },
    ioWrite32(slot: number, reg: number, v: number): void {
      cf8(slot, reg);
      p.pio.write(0xcfc, le(v, 4));
    },
    ecam32(slot: number, reg: number): number {
      const d = new Uint8Array(4);
      p.mmio.read(0xe800_0000 + (slot << 15) + reg, d);
      return readLe(d);
    },
    ecamWrite(slot: number, reg: number, v: number, len = 4): void {
      p.mmio.write(0xe800_0000 + (slot << 15) + reg, le(v, len));
    },
  };
}

function mmio(p: Platform) {
  return {
    r(addr: number, len: number): number {
      const d = new Uint8Array(len);
      p.mmio.read(addr, d);
      return readLe(d);
    },
    w(addr: number, v: number, len: number): void {
      p.mmio.write(addr, le(v, len));
    },
  };
}

/** Walks the capability list and returns the offsets of virtio vendor caps by cfg_type, plus MSI-X. */
function caps(c: ReturnType<typeof cfg>, slot: number) {
  const found: Record<string, number> = {};
  let ptr = c.io32(slot, 0x34) & 0xff;
  while (ptr) {
    const head = c.io32(slot, ptr);
    const id = head & 0xff;
    if (id === 0x11) found.msix = ptr;
    if (id === 0x09) found[`virtio${(head >> 24) & 0xff}`] = ptr;
    ptr = (head >> 8) & 0xff;
  }
  return found;
}

describe('PCI', () => {
  it('config space reads the same through 0xCF8/0xCFC and ECAM', () => {
    const { p } = build();
    const c = cfg(p);
    expect(c.io32(0, 0)).toBe(0x0d57_8086);
    expect(c.ecam32(0, 0)).toBe(0x0d57_8086);
    expect(c.io32(1, 0)).toBe(0x1044_1af4); // virtio-rng (type 4)
    expect(c.ecam32(2, 0)).toBe(0x1043_1af4); // virtio-console
    expect(c.io32(1, 8) >>> 8).toBe(0xff0000);
    expect(c.io32(1, 8) & 0xff).toBe(1);
    expect(c.io32(1, 0x2c)).toBe(0x0040_1af4);
    expect(c.io32(7, 0)).toBe(0xffff_ffff); // empty slot
    expect(c.ecam32(1, 0x400)).toBe(0); // extended config space is empty
  });

  it('BAR sizing probe and guest relocation', () => {
    const { p } = build();
    const c = cfg(p);
    const t = p.virtio[0];
    const lo0 = c.io32(1, 0x10);
    const hi0 = c.io32(1, 0x14);
    expect(lo0 & 0xf).toBe(0x4); // 64-bit memory BAR
    expect((lo0 & ~0xf) + hi0 * 2 ** 32).toBe(p.highMmio.base);
    // sizing with decode disabled, as Linux does
    c.ioWrite32(1, 0x04, 0);
    c.ioWrite32(1, 0x10, 0xffff_ffff);
    c.ioWrite32(1, 0x14, 0xffff_ffff);
    expect(c.io32(1, 0x10) >>> 0).toBe(((~(512 * 1024 - 1)) | 0x4) >>> 0);
    expect(c.io32(1, 0x14) >>> 0).toBe(0xffff_ffff);
    c.ioWrite32(1, 0x10, lo0);
    c.ioWrite32(1, 0x14, hi0);
    c.ioWrite32(1, 0x04, 0x6);
    expect(t.barAddress()).toBe(p.highMmio.base);
    // relocate into the 32-bit window
    c.ioWrite32(1, 0x10, 0xc010_0000 | 4);
    c.ioWrite32(1, 0x14, 0);
    expect(t.barAddress()).toBe(0xc010_0000);
    expect(mmio(p).r(0xc010_0000 + 0x12, 2)).toBe(1); // num_queues through the moved BAR
    expect(p.mmio.find(p.highMmio.base)).toBeNull();
    // a relocation onto another device's BAR is refused
    const other = p.virtio[1].barAddress();
    c.ioWrite32(1, 0x10, (other % 2 ** 32) | 4);
    c.ioWrite32(1, 0x14, Math.floor(other / 2 ** 32));
    expect(t.barAddress()).toBe(0xc010_0000);
  });

  it('MSI-X table writes become route updates; masking and PBA', () => {
    const { p, routes, irqs } = build();
    const c = cfg(p);
    const t = p.virtio[1]; // console: 2 queues + config = 3 vectors
    const cap = caps(c, 2).msix;
    expect(cap).toBeDefined();
    expect((c.io32(2, cap) >>> 16) & 0x7ff).toBe(2);
    expect(c.io32(2, cap + 4)).toBe(0x8000); // table in BAR0 @0x8000
    expect(c.io32(2, cap + 8)).toBe(0x48000);
    const bar = t.barAddress();
    const m = mmio(p);
    const entry = (v: number) => bar + 0x8000 + v * 16;
    expect(m.r(entry(0) + 12, 4)).toBe(1); // masked at reset
    m.w(entry(1), 0xfee0_0000, 4);
    m.w(entry(1) + 4, 0, 4);
    m.w(entry(1) + 8, 0x4041, 4);
    m.w(entry(1) + 12, 0, 4); // unmask entry, MSI-X still disabled
    expect(routes.log).toEqual([]);
    c.ecamWrite(2, cap + 2, 0x8000 | 2, 2); // enable
    const gsi = t.msix.gsi(1);
    expect(gsi).toBe(MSI_GSI_BASE + 2 + 1); // rng took 2 vectors first
    expect(routes.routes.get(gsi)).toEqual({ addressLo: 0xfee0_0000, addressHi: 0, data: 0x4041 });
    expect(routes.masked.get(gsi)).toBe(false);
    // function mask → masked; a data-plane trigger latches PBA; unmask delivers it
    c.ecamWrite(2, cap + 2, 0xc000 | 2, 2);
    expect(routes.masked.get(gsi)).toBe(true);
    t.msix.vector(1).trigger();
    expect(irqs.get(gsi)?.count).toBe(0);
    expect(m.r(bar + 0x48000, 8)).toBe(2);
    c.ecamWrite(2, cap + 2, 0x8000 | 2, 2);
    expect(routes.masked.get(gsi)).toBe(false);
    expect(irqs.get(gsi)?.count).toBe(1);
    expect(m.r(bar + 0x48000, 8)).toBe(0);
    // reprogramming the message of a live vector updates the route
    m.w(entry(1) + 8, 0x4051, 4);
    expect(routes.routes.get(gsi)?.data).toBe(0x4051);
  });
});

/** Drives the common config of a transport the way Linux's virtio_pci_modern does. */
function driver(p: Platform, index: number) {
  const m = mmio(p);
  const bar = p.virtio[index].barAddress();
  const common = (off: number, len: number, v?: number): number => {
    if (v === undefined) return m.r(bar + off, len);
    m.w(bar + off, v, len);
    return 0;
  };
  return { m, bar, common };
}

describe('virtio-pci transport', () => {
  let mem: GuestMemory | null = null;
  let loop: EventLoop | null = null;
  afterEach(() => {
    loop?.close();
    mem?.close();
    loop = null;
    mem = null;
  });

  it('negotiates features, sets up a queue and emits the activation event at DRIVER_OK', () => {
    const { p, events } = build();
    const { common } = driver(p, 0);
    common(0x14, 1, 0);
    common(0x14, 1, 1);
    common(0x14, 1, 1 | 2);
    common(0x00, 4, 1);
    expect(common(0x04, 4)).toBe(1); // VERSION_1 in the high word
    common(0x00, 4, 0);
    const lo = common(0x04, 4);
    expect(lo & (1 << 29)).not.toBe(0); // EVENT_IDX
    common(0x08, 4, 0);
    common(0x0c, 4, 1 << 29);
    common(0x08, 4, 1);
    common(0x0c, 4, 1);
    common(0x14, 1, 1 | 2 | 8);
    expect(common(0x14, 1) & 8).toBe(8);
    expect(common(0x12, 2)).toBe(1);
    common(0x10, 2, 0);
    expect(common(0x10, 2)).toBe(0);
    common(0x16, 2, 0);
    expect(common(0x18, 2)).toBe(256);
    common(0x18, 2, 300); // not a power of two: ignored
    expect(common(0x18, 2)).toBe(256);
    common(0x18, 2, 64);
    common(0x1a, 2, 1);
    expect(common(0x1a, 2)).toBe(1);
    common(0x1a, 2, 9); // beyond the table: NO_VECTOR
    expect(common(0x1a, 2)).toBe(0xffff);
    common(0x1a, 2, 1);
    expect(common(0x1e, 2)).toBe(0);
    common(0x20, 4, 0x10000);
    common(0x24, 4, 0);
    common(0x28, 4, 0x10400);
    common(0x30, 4, 0x11000);
    common(0x1c, 2, 1);
    expect(events).toEqual([]);
    common(0x14, 1, 1 | 2 | 8 | 4);
    expect(events.length).toBe(1);
    const ev = events[0];
    if (ev.type !== 'virtio-activate') throw new Error('wrong event');
    expect(ev.features).toBe((1n << 32n) | (1n << 29n));
    expect(ev.queues).toEqual([
      {
        index: 0,
        size: 64,
        descAddr: 0x10000,
        availAddr: 0x10400,
        usedAddr: 0x11000,
        vector: 1,
        gsi: MSI_GSI_BASE + 1,
        notifyAddr: p.highMmio.base + 0x6000,
      },
    ]);
    expect(ev.configGsi).toBe(MSI_GSI_BASE);
    // queue fields are frozen while live; reset clears everything and posts an event
    common(0x18, 2, 32);
    expect(common(0x18, 2)).toBe(64);
    common(0x14, 1, 0);
    expect(events[1]).toEqual({ type: 'virtio-reset', device: 0, name: 'virtio0-rng', seq: 1 });
    expect(common(0x14, 1)).toBe(0);
    expect(common(0x18, 2)).toBe(256);
  });

  it('refuses FEATURES_OK for unoffered features', () => {
    const { p } = build();
    const { common } = driver(p, 0);
    common(0x08, 4, 0);
    common(0x0c, 4, 1 << 5);
    common(0x08, 4, 1);
    common(0x0c, 4, 1);
    common(0x14, 1, 1 | 2 | 8);
    expect(common(0x14, 1) & 8).toBe(0);
  });

  it('a second thread model over the same arena sees the same transport state', () => {
    const a = build();
    const b = build(a.sab);
    driver(a.p, 0).common(0x16, 2, 0);
    driver(a.p, 0).common(0x18, 2, 16);
    expect(driver(b.p, 0).common(0x18, 2)).toBe(16);
  });

  /** Drives virtio-rng (function 1) to DRIVER_OK with queue 0 at `layout`; returns the activator's registrations. */
  function startRng(p: Platform, events: PlatformEvent[], ioEvents?: { register: (a: number, fd: number) => void; unregister: (a: number, fd: number) => void }, size = 16) {
    mem = GuestMemory.anonymous([{ guestAddr: 0, size: 4 << 20 }]);
    loop = new EventLoop();
    const registered: { addr: number; fd: number }[] = [];
    const activator = new VirtioActivator(p.virtio, mem, ioEvents ?? {
      register: (addr, fd) => registered.push({ addr, fd }),
      unregister: (addr, fd) => registered.splice(registered.findIndex((r) => r.addr === addr && r.fd === fd), 1),
    }, loop);
    const layout = compactLayout(0x10000, size);
    const { m, bar, common } = driver(p, 0);
    /** A driver's set-up of queue 0 (VERSION_1 only) up to DRIVER_OK. */
    const setUp = (q: { size: number; descAddr: number; availAddr: number; usedAddr: number }) => {
      common(0x14, 1, 3);
      common(0x08, 4, 1);
      common(0x0c, 4, 1);
      common(0x14, 1, 3 | 8);
      common(0x16, 2, 0);
      common(0x18, 2, q.size);
      common(0x20, 4, q.descAddr);
      common(0x28, 4, q.availAddr);
      common(0x30, 4, q.usedAddr);
      common(0x1c, 2, 1);
      common(0x14, 1, 3 | 8 | 4);
    };
    setUp(layout);
    return { activator, registered, layout, m, bar, common, setUp, handle: () => events.splice(0).forEach((e) => activator.handle(e)) };
  }

  it('loses no kick the guest writes before the main thread registered the queue\'s ioeventfd', () => {
    const { p, events } = build();
    const r = startRng(p, events);
    // Between DRIVER_OK and the activation on the main thread the notify reaches the bus.
    r.m.w(r.bar + 0x6000, 0, 2);
    expect(events.map((e) => e.type)).toEqual(['virtio-activate', 'virtio-notify']);
    r.handle();
    expect(r.registered.map((x) => x.addr)).toEqual([p.highMmio.base + 0x6000]);
    // The kick eventfd holds a kick for the back-end (here the rng's own runner): it was not lost.
    expect(loop!.poll(100)).toBe(1);
    // Before DRIVER_OK a notify is nobody's business.
    r.common(0x14, 1, 0);
    r.handle();
    r.m.w(r.bar + 0x6000, 0, 2);
    expect(events).toEqual([]);
  });

  it('moves the queue notify ioeventfds with a BAR the guest relocates while the device runs', () => {
    const { p, events } = build();
    const r = startRng(p, events);
    r.handle();
    expect(loop!.poll(0)).toBe(1); // the activation's own kick
    const c = cfg(p);
    const moved = 0xc010_0000;
    c.ioWrite32(1, 0x04, 0x6); // memory decode + bus master
    c.ioWrite32(1, 0x10, moved | 4);
    c.ioWrite32(1, 0x14, 0);
    expect(p.virtio[0].barAddress()).toBe(moved);
    // The first kick at the new place takes the slow path and brings the ioeventfd over.
    mmio(p).w(moved + 0x6000, 0, 2);
    expect(events.map((e) => e.type)).toEqual(['virtio-notify']);
    r.handle();
    expect(r.registered.map((x) => x.addr)).toEqual([moved + 0x6000]);
    expect(loop!.poll(100)).toBe(1);
  });

  it('a guest reset returns to the vCPU only once the main thread stopped the device', async () => {
    const sab = new SharedArrayBuffer(1 << 20);
    const { p, events } = build(sab);
    const r = startRng(p, events);
    r.handle();
    const vcpu = startTsWorker(new URL('./fixtures/reset-writer.ts', import.meta.url), { sab, statusAddr: r.bar + 0x14 }, 'vcpu-reset');
    try {
      const got: unknown[] = [];
      vcpu.on('message', (m) => got.push(m));
      for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((res) => setTimeout(res, 10));
      await new Promise((res) => setTimeout(res, 200));
      expect(got).toEqual([{ type: 'virtio-reset', device: 0, name: 'virtio0-rng', seq: 1 }]); // not 'written' yet
      r.activator.handle(got[0] as PlatformEvent);
      for (let i = 0; i < 200 && got.length === 1; i++) await new Promise((res) => setTimeout(res, 10));
      expect(got[1]).toBe('written');
    } finally {
      await vcpu.terminate();
    }
  });

  it('tells the driver DEVICE_NEEDS_RESET, with a config interrupt, when activation fails on the main thread', () => {
    const { p, events } = build();
    const r = startRng(p, events, { register: () => { throw new Error('no ioeventfd'); }, unregister: () => undefined });
    r.handle();
    expect(r.common(0x14, 1)).toBe(3 | 8 | 4 | 0x40);
    expect(r.m.r(r.bar + 0x2000, 1) & 2).toBe(2); // ISR: configuration change
  });

  it('fails an activation whose rings run past the end of guest RAM before a back-end sees them (NEEDS_RESET)', () => {
    const { p, events } = build();
    let registrations = 0;
    const r = startRng(p, events, { register: () => void registrations++, unregister: () => undefined });
    r.common(0x14, 1, 0);
    r.handle();
    // The 256-byte descriptor table starts in RAM and runs past its end.
    r.setUp({ size: 16, descAddr: (4 << 20) - 16, availAddr: r.layout.availAddr, usedAddr: r.layout.usedAddr });
    registrations = 0;
    r.handle();
    expect(registrations).toBe(0); // refused before any queue was set up (a vhost-user back-end would have hung up)
    expect(r.common(0x14, 1)).toBe(3 | 8 | 4 | 0x40);
  });

  it('ignores an activation that a reset from another vCPU overtook (their events may come out of order)', () => {
    const { p, events } = build();
    const r = startRng(p, events);
    r.common(0x14, 1, 0);
    expect(events.map((e) => e.type)).toEqual(['virtio-activate', 'virtio-reset']);
    r.activator.handle(events[1]);
    r.activator.handle(events[0]);
    expect(r.registered).toEqual([]);
    expect(loop!.poll(0)).toBe(0);
    // Reset and set up again before the main thread saw the first activation: only the second one is applied.
    events.length = 0;
    r.setUp(r.layout);
    r.common(0x14, 1, 0);
    r.setUp({ size: 8, descAddr: 0x30000, availAddr: 0x30800, usedAddr: 0x31000 });
    expect(events.map((e) => e.type)).toEqual(['virtio-activate', 'virtio-reset', 'virtio-activate']);
    let activations = 0;
    const rng = p.virtio[0].device;
    const activate = rng.activate.bind(rng);
    rng.activate = (ctx) => {
      activations++;
      expect(ctx.queues[0].layout.descAddr).toBe(0x30000);
      activate(ctx);
    };
    r.handle();
    expect(activations).toBe(1);
  });

  it('tells the driver DEVICE_NEEDS_RESET when a queue stops on a bad chain from the guest', () => {
    const { p, events } = build();
    const r = startRng(p, events);
    r.handle();
    const dq = new DriverQueue<number>(mem!, r.layout);
    dq.add([], [{ addr: 0x20000, len: 64 }], 1);
    mem!.writeU64(r.layout.descAddr, 0x4000_0000); // the guest rewrites its descriptor: a buffer outside its RAM
    dq.publish();
    eventfdWrite(r.registered[0].fd);
    loop!.poll(100);
    expect(r.common(0x14, 1) & 0x40).toBe(0x40);
    expect(r.m.r(r.bar + 0x2000, 1) & 2).toBe(2); // ISR: configuration change
  });

  it('virtio-rng fills at most 64 KiB per request and serves a flood of requests in rounds, letting the main loop in between', async () => {
    const { p, events } = build();
    const r = startRng(p, events, undefined, 128);
    const dq = new DriverQueue<number>(mem!, r.layout);
    dq.add([], [{ addr: 0x100000, len: 1 << 20 }], -1); // one request as big as 1 MiB
    for (let i = 0; i < 100; i++) dq.add([], [{ addr: 0x200000 + i * 64, len: 64 }], i);
    dq.publish();
    r.handle(); // activation runs the queue once
    const first = dq.takeUsed();
    expect(first.length).toBe(64);
    expect(first[0]).toEqual({ head: 0, token: -1, len: 64 << 10 });
    await new Promise((res) => setImmediate(res));
    expect(dq.takeUsed().length).toBe(37);
  });

  it('virtio-rng fills a DriverQueue buffer after activation', () => {
    const { p, events, irqs } = build();
    mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
    loop = new EventLoop();
    const registered: { addr: number; fd: number }[] = [];
    const activator = new VirtioActivator(p.virtio, mem, {
      register: (addr, fd) => registered.push({ addr, fd }),
      unregister: () => {},
    }, loop);
    const layout = compactLayout(0x10000, 16);
    const c = cfg(p);
    const cap = caps(c, 1).msix;
    const { m, bar, common } = driver(p, 0);
    // MSI-X: enable, vector 1 unmasked
    c.ecamWrite(1, cap + 2, 0x8000 | 1, 2);
    m.w(bar + 0x8000 + 16, 0xfee0_0000, 4);
    m.w(bar + 0x8000 + 16 + 8, 0x41, 4);
    m.w(bar + 0x8000 + 16 + 12, 0, 4);
    common(0x14, 1, 3);
    common(0x08, 4, 1);
    common(0x0c, 4, 1);
    common(0x14, 1, 3 | 8);
    common(0x16, 2, 0);
    common(0x18, 2, 16);
    common(0x1a, 2, 1);
    common(0x20, 4, layout.descAddr);
    common(0x28, 4, layout.availAddr);
    common(0x30, 4, layout.usedAddr);
    common(0x1c, 2, 1);
    common(0x14, 1, 3 | 8 | 4);
    for (const e of events) activator.handle(e);
    expect(registered.map((r) => r.addr)).toEqual([p.highMmio.base + 0x6000]);

    const dq = new DriverQueue<string>(mem, layout);
    const buf = 0x20000;
    mem.write(buf, new Uint8Array(4096));
    dq.add([], [{ addr: buf, len: 4096 }], 'req');
    dq.publish();
    eventfdWrite(registered[0].fd);
    expect(loop.poll(1000)).toBe(1);
    const used = dq.takeUsed();
    expect(used).toEqual([{ head: 0, token: 'req', len: 4096 }]);
    const data = mem.slice(buf, 4096);
    expect(data.some((x) => x !== 0)).toBe(true);
    expect(irqs.get(MSI_GSI_BASE + 1)?.count).toBe(1);
    // reset tears the queue down
    common(0x14, 1, 0);
    for (const e of events.slice(1)) activator.handle(e);
  });
});
