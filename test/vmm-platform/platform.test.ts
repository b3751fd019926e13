import { afterEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import { compactLayout, DriverQueue } from '../../protocol/virtqueue/index.js';
import { buildPlatform } from '../../vmm/devices/platform.js';
import { GED_ADDR, GED_GSI, SERIAL_GSI } from '../../vmm/devices/platform-layout.js';
import { GED_POWER_BUTTON } from '../../vmm/devices/legacy.js';
import { SharedArena } from '../../vmm/devices/shared-state.js';
import type { PlatformEvent } from '../../vmm/devices/types.js';
import { VirtioConsole } from '../../vmm/virtio/console.js';
import { NO_INTERRUPT } from '../../vmm/virtio/device.js';
import { EventLoop } from '../../vmm/virtio/event-loop.js';
import { VirtioRng } from '../../vmm/virtio/rng.js';
import { CountingIrq, RecordingRoutes, u8 } from './helpers.js';

const GiB = 2 ** 30;

function model(sab: SharedArrayBuffer, out: number[], events: PlatformEvent[], irqs: Map<number, CountingIrq>) {
  return buildPlatform({
    arena: new SharedArena(sab),
    vcpus: 1,
    memBelow4g: 2 * GiB,
    memAbove4g: 2 * GiB,
    serialOutput: (b) => out.push(...b),
    events: (e) => events.push(e),
    irq: (gsi) => {
      const i = irqs.get(gsi) ?? new CountingIrq();
      irqs.set(gsi, i);
      return i;
    },
    routes: new RecordingRoutes(),
    virtio: [new VirtioRng()],
  });
}

describe('platform assembly', () => {
  it('two thread models over one arena share device state; GSIs are deterministic', () => {
    const sab = new SharedArrayBuffer(1 << 20);
    const outA: number[] = [];
    const outB: number[] = [];
    const events: PlatformEvent[] = [];
    const irqs = new Map<number, CountingIrq>();
    const a = model(sab, outA, events, irqs);
    const b = model(sab, outB, events, irqs);
    expect(a.gsis).toEqual([SERIAL_GSI, GED_GSI, 24, 25]);
    expect(b.gsis).toEqual(a.gsis);
    expect(b.highMmio.base).toBe(6 * GiB);
    // vCPU A sets LCR; vCPU B reads it back; B transmits into its own sink
    a.pio.write(0x3fb, u8(0x03));
    const d = new Uint8Array(1);
    b.pio.read(0x3fb, d);
    expect(d[0]).toBe(0x03);
    b.pio.write(0x3f8, u8(0x41));
    expect(outB).toEqual([0x41]);
    expect(outA).toEqual([]);
    // main thread injects input through its model; a vCPU reads it
    a.pio.write(0x3f9, u8(0x01));
    a.serial!.enqueueInput(u8(0x7a));
    expect(irqs.get(SERIAL_GSI)?.count).toBe(1);
    b.pio.read(0x3f8, d);
    expect(d[0]).toBe(0x7a);
    // power button through the GED: interrupt, then _EVT's read returns and clears the bit
    a.ged.notify(GED_POWER_BUTTON);
    expect(irqs.get(GED_GSI)?.count).toBe(1);
    b.mmio.read(GED_ADDR, d);
    expect(d[0]).toBe(8);
    a.mmio.read(GED_ADDR, d);
    expect(d[0]).toBe(0);
    // reset and poweroff requests become events
    b.pio.write(0x64, u8(0xfe));
    a.pio.write(0x600, u8(0x34));
    expect(events.map((e) => e.type)).toEqual(['reset', 'poweroff']);
    // unmapped ports read as all-ones
    expect(a.pio.read(0x2f8, d)).toBe(false);
  });
});

describe('virtio-console', () => {
  let mem: GuestMemory | null = null;
  let loop: EventLoop | null = null;
  afterEach(() => {
    loop?.close();
    mem?.close();
  });

  it('tx goes to the sink; input is delivered into rx buffers', () => {
    mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
    loop = new EventLoop();
    const out: number[] = [];
    const con = new VirtioConsole((b) => out.push(...b));
    const rxLayout = compactLayout(0x1000, 8);
    const txLayout = compactLayout(0x3000, 8);
    const kicks: number[] = [];
    const rxIrq = new CountingIrq();
    con.ackFeatures(1n << 32n);
    // kick eventfds come from VirtioActivator in production
    kicks.push(eventfd(), eventfd());
    try {
    con.activate({
      memory: mem!,
      features: 1n << 32n,
      configInterrupt: NO_INTERRUPT,
      loop: loop!,
      queues: [
        { index: 0, layout: rxLayout, kick: kicks[0], interrupt: rxIrq },
        { index: 1, layout: txLayout, kick: kicks[1], interrupt: NO_INTERRUPT },
      ],
    });
    const tx = new DriverQueue(mem!, txLayout);
    mem!.write(0x8000, new TextEncoder().encode('hello'));
    tx.add([{ addr: 0x8000, len: 5 }], [], 't');
    tx.publish();
    eventfdWrite(kicks[1]);
    loop!.poll(1000);
    expect(Buffer.from(out).toString()).toBe('hello');
    expect(tx.takeUsed().length).toBe(1);

    con.input(new TextEncoder().encode('abc')); // no rx buffers yet: queued
    const rx = new DriverQueue(mem!, rxLayout);
    rx.add([], [{ addr: 0x9000, len: 2 }], 'r1');
    rx.add([], [{ addr: 0x9100, len: 16 }], 'r2');
    rx.publish();
    eventfdWrite(kicks[0]);
    loop!.poll(1000);
    const used = rx.takeUsed();
    expect(used.map((u) => u.len)).toEqual([2, 1]);
    expect(Buffer.from(mem!.slice(0x9000, 2)).toString()).toBe('ab');
    expect(Buffer.from(mem!.slice(0x9100, 1)).toString()).toBe('c');
    expect(rxIrq.count).toBeGreaterThan(0);
    } finally {
      con.reset();
      kicks.forEach(closeQuiet);
    }
  });
});
