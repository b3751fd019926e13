import { describe, expect, it } from 'vitest';
import { afterBusAccess, Bus } from '../../vmm/devices/bus.js';
import { fdSink } from '../../vmm/vm-model.js';
import { openFile, O_WRONLY, O_CLOEXEC, close } from '../../protocol/sys/fd.js';
import { AcpiPmDevice, Cmos, I8042 } from '../../vmm/devices/legacy.js';
import { Serial } from '../../vmm/devices/serial.js';
import { SharedArena } from '../../vmm/devices/shared-state.js';
import type { BusDevice, PlatformEvent } from '../../vmm/devices/types.js';
import { CountingIrq, u8 } from './helpers.js';

function recorder(): BusDevice & { writes: [number, number][] } {
  const writes: [number, number][] = [];
  return { writes, read: (o, d) => d.fill(o), write: (o, d) => writes.push([o, d[0]]) };
}

describe('guest output sinks', () => {
  it('never throw: output the host cannot take is dropped (a full disk here), so no device the guest uses fails over it', () => {
    const fd = openFile('/dev/full', O_WRONLY | O_CLOEXEC); // every write: ENOSPC
    try {
      const sink = fdSink(fd, 'console');
      expect(() => sink(new Uint8Array(100))).not.toThrow();
      expect(() => sink(new Uint8Array(100))).not.toThrow();
    } finally {
      close(fd);
    }
  });
});

describe('Bus', () => {
  it('runs what a device defers with afterBusAccess once the access has released its lock (at once outside an access)', () => {
    const arena = SharedArena.create(4096);
    const bus = new Bus('mmio', arena);
    const lock = arena.lock('shared');
    const seen: string[] = [];
    // A vhost-user config write waits for the main thread there, which may need the same lock meanwhile.
    const probe = () => seen.push(lock.held ? 'held' : 'free');
    bus.insert({ lock, read: () => undefined, write: () => (probe(), afterBusAccess(probe)) }, 0x1000, 0x10, 'dev');
    expect(bus.write(0x1000, u8(1))).toBe(true);
    expect(seen).toEqual(['held', 'free']);
    afterBusAccess(() => seen.push('now'));
    expect(seen).toEqual(['held', 'free', 'now']);
  });

  it('maps ranges, refuses overlaps, reports misses', () => {
    const bus = new Bus('pio', SharedArena.create(4096));
    const a = recorder();
    bus.insert(a, 0x100, 0x10, 'a');
    bus.insert(recorder(), 0x20, 0x8, 'b');
    expect(() => bus.insert(recorder(), 0x10f, 2, 'c')).toThrow(/overlaps/);
    const d = new Uint8Array(1);
    expect(bus.read(0x105, d)).toBe(true);
    expect(d[0]).toBe(5);
    expect(bus.write(0x10f, u8(7))).toBe(true);
    expect(a.writes).toEqual([[0xf, 7]]);
    expect(bus.read(0x110, d)).toBe(false);
    expect(d[0]).toBe(0xff);
    // an access straddling the range end is not decoded
    expect(bus.read(0x10f, new Uint8Array(2))).toBe(false);
  });

  it('a relocation in one thread model is seen by another model over the same arena', () => {
    const sab = new SharedArrayBuffer(4096);
    const build = () => {
      const bus = new Bus('mmio', new SharedArena(sab));
      const r = bus.insert(recorder(), 0x1000, 0x100, 'bar');
      bus.insert(recorder(), 0x4000, 0x100, 'other');
      return { bus, r };
    };
    const one = build();
    const two = build();
    one.r.move(0x2000);
    const d = new Uint8Array(1);
    expect(two.bus.read(0x2001, d)).toBe(true);
    expect(two.bus.read(0x1001, d)).toBe(false);
    expect(() => two.r.move(0x4080)).toThrow(/overlaps/);
    expect(one.bus.find(0x2000)?.name).toBe('bar');
  });

  it('survives a throwing device', () => {
    const bus = new Bus('pio', SharedArena.create(4096));
    bus.insert({ read: () => { throw new Error('x'); }, write: () => { throw new Error('y'); } }, 0, 1, 'bad');
    const d = new Uint8Array(1);
    expect(bus.read(0, d)).toBe(true);
    expect(d[0]).toBe(0xff);
    expect(bus.write(0, d)).toBe(true);
  });
});

describe('16550 UART', () => {
  function setup() {
    const out: number[] = [];
    const irq = new CountingIrq();
    const serial = new Serial(SharedArena.create(8192), { irq, output: (b) => out.push(...b) });
    const rd = (o: number) => {
      const d = new Uint8Array(1);
      serial.read(o, d);
      return d[0];
    };
    const wr = (o: number, v: number) => serial.write(o, u8(v));
    return { serial, out, irq, rd, wr };
  }

  it('THR writes reach the sink; LSR reports an empty transmitter', () => {
    const { out, rd, wr, irq } = setup();
    for (const c of 'hi\n') wr(0, c.charCodeAt(0));
    expect(Buffer.from(out).toString()).toBe('hi\n');
    expect(rd(5) & 0x60).toBe(0x60);
    expect(rd(5) & 1).toBe(0);
    expect(irq.count).toBe(0); // interrupts disabled
  });

  it('DLAB switches offsets 0/1 to the divisor latch', () => {
    const { out, rd, wr } = setup();
    wr(3, 0x80);
    wr(0, 0x0c);
    wr(1, 0x00);
    expect(rd(0)).toBe(0x0c);
    wr(3, 0x03);
    expect(rd(3)).toBe(0x03);
    expect(rd(1)).toBe(0); // IER, not DLH
    expect(out.length).toBe(0);
    wr(7, 0x5a);
    expect(rd(7)).toBe(0x5a);
  });

  it('raises THR-empty when enabled and IIR reports then clears it', () => {
    const { rd, wr, irq } = setup();
    expect(rd(2) & 0x0f).toBe(0x01);
    wr(1, 0x02);
    expect(irq.count).toBe(1);
    expect(rd(2) & 0x0f).toBe(0x02);
    expect(rd(2) & 0x0f).toBe(0x01); // reading IIR acknowledged it
    wr(0, 0x41);
    expect(irq.count).toBe(2);
    expect(rd(2) & 0x0f).toBe(0x02);
  });

  it('receives input from the shared ring with a data-available interrupt', () => {
    const { serial, rd, wr, irq } = setup();
    wr(1, 0x01);
    expect(serial.enqueueInput(u8(0x61, 0x62))).toBe(2);
    expect(irq.count).toBe(1);
    expect(rd(5) & 1).toBe(1);
    expect(rd(2) & 0x0f).toBe(0x04);
    expect(rd(0)).toBe(0x61);
    expect(rd(0)).toBe(0x62);
    expect(rd(5) & 1).toBe(0);
    expect(rd(2) & 0x0f).toBe(0x01);
  });

  it('loopback mode mirrors MCR into MSR and THR into RBR (Linux autoconfig)', () => {
    const { rd, wr, out } = setup();
    wr(4, 0x10 | 0x0a);
    expect(rd(6) & 0xf0).toBe(0x90);
    wr(0, 0x55);
    expect(rd(0)).toBe(0x55);
    expect(out.length).toBe(0);
    wr(4, 0);
    expect(rd(6)).toBe(0xb0);
  });
});

describe('legacy devices', () => {
  it('i8042 0xFE requests a reset; ACPI PM port powers off and resets', () => {
    const events: PlatformEvent[] = [];
    const kbd = new I8042((e) => events.push(e));
    kbd.write(4, u8(0xfe));
    const pm = new AcpiPmDevice((e) => events.push(e));
    pm.write(0, u8((5 << 2) | 0x20));
    pm.write(0, u8(1));
    pm.write(0, u8(5 << 2)); // SLP_EN missing: nothing
    expect(events.map((e) => e.type)).toEqual(['reset', 'poweroff', 'reset']);
  });

  it('CMOS reports time in BCD and memory sizes', () => {
    const cmos = new Cmos(SharedArena.create(4096), {
      memBelow4g: 2 * 2 ** 30,
      memAbove4g: 2 ** 32,
      now: () => new Date(Date.UTC(2024, 4, 17, 13, 45, 59)),
    });
    const reg = (i: number) => {
      cmos.write(0, u8(i));
      const d = new Uint8Array(1);
      cmos.read(1, d);
      return d[0];
    };
    expect(reg(0x00)).toBe(0x59);
    expect(reg(0x02)).toBe(0x45);
    expect(reg(0x04)).toBe(0x13);
    expect(reg(0x09)).toBe(0x24);
    expect(reg(0x32)).toBe(0x20);
    const below = reg(0x34) | (reg(0x35) << 8);
    expect(below).toBe((2 * 2 ** 30 - 16 * 2 ** 20) / 65536);
    const above = reg(0x5b) | (reg(0x5c) << 8) | (reg(0x5d) << 16);
    expect(above).toBe(2 ** 32 / 65536);
  });
});
