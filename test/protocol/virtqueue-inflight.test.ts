import { afterAll, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { dup } from '../../protocol/sys/fd.js';
import {
  compactLayout, DeviceQueue, DriverQueue, InflightRing, inflightRegionSize, INFLIGHT_VERSION, RingMemoryError, VirtqueueError,
} from '../../protocol/virtqueue/index.js';

const SIZE = 8;
const layout = compactLayout(0x1000, SIZE);
const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
afterAll(() => mem.close());

/** A fresh ring pair over zeroed rings, and a zeroed inflight buffer (what GET_INFLIGHT_FD hands out). */
function setup(): { drv: DriverQueue<string>; buf: Uint8Array } {
  mem.slice(0x1000, 0x1000).fill(0);
  return { drv: new DriverQueue<string>(mem, layout), buf: new Uint8Array(inflightRegionSize(SIZE)) };
}

/** A back-end process starting on the ring with the buffer the front-end kept; `base` as SET_VRING_BASE says. */
function backend(buf: Uint8Array, base = 0): { dev: DeviceQueue; state: string; resubmitted: number } {
  const dev = new DeviceQueue(mem, layout, { eventIdx: false });
  dev.nextAvailIdx = base;
  const found = dev.trackInflight(new InflightRing(buf, SIZE), true);
  return { dev, state: found?.state ?? '', resubmitted: found?.resubmitted ?? 0 };
}

/** Makes chains available; returns their heads by token. */
function offer(drv: DriverQueue<string>, ...tokens: string[]): Map<number, string> {
  const heads = new Map<number, string>();
  for (const t of tokens) heads.set(drv.add([{ addr: 0x8000, len: 16 }], [{ addr: 0x9000, len: 1 }], t)!, t);
  drv.publish();
  return heads;
}

/** Heads the device pops until the ring is empty, as driver tokens. */
function popAll(dev: DeviceQueue, byHead: Map<number, string>): string[] {
  const out: string[] = [];
  for (let c; (c = dev.pop()) !== null;) out.push(byHead.get(c.head) ?? `head ${c.head}`);
  return out;
}

describe('inflight tracking (INFLIGHT_SHMFD)', () => {
  it('a restarted back-end resubmits what the killed one took and never returned, oldest first, then goes on', () => {
    const { drv, buf } = setup();
    const heads = offer(drv, 'a', 'b', 'c');
    const first = backend(buf);
    expect(first.state).toBe('new');
    const taken = [first.dev.pop()!, first.dev.pop()!, first.dev.pop()!];
    expect(taken.map((c) => heads.get(c.head))).toEqual(['a', 'b', 'c']);
    // c completes first; then the back-end dies with a and b in flight.
    first.dev.pushUsed(taken[2].head, 1);
    first.dev.publishUsed();
    expect(drv.takeUsed().map((u) => u.token)).toEqual(['c']);
    for (const [h, t] of offer(drv, 'd')) heads.set(h, t);

    // QEMU sets the base to used.idx after a lost connection: replaying from there would serve c twice and a never.
    const second = backend(buf, 1);
    expect(second.state).toBe('recovered');
    expect(second.resubmitted).toBe(2);
    const again = popAll(second.dev, heads);
    expect(again).toEqual(['a', 'b', 'd']);
    for (const [h] of [...heads].filter(([, t]) => t !== 'c')) second.dev.pushUsed(h, 1);
    second.dev.publishUsed();
    expect(drv.takeUsed().map((u) => u.token).sort()).toEqual(['a', 'b', 'd']);

    // Everything was returned: a third back-end has nothing to resubmit and carries on at the avail index.
    const third = backend(buf, 0);
    expect(third.state).toBe('recovered');
    expect(third.resubmitted).toBe(0);
    expect(third.dev.nextAvailIdx).toBe(4);
    expect(third.dev.pop()).toBeNull();
  });

  it('finishes a used batch the killed back-end published but had not cleared', () => {
    const { drv, buf } = setup();
    const heads = offer(drv, 'a', 'b', 'c');
    const first = backend(buf);
    const taken = [first.dev.pop()!, first.dev.pop()!, first.dev.pop()!];
    // b and a pushed used and used.idx stored (the driver owns them), then killed before their flags were cleared.
    first.dev.pushUsed(taken[1].head, 1);
    first.dev.pushUsed(taken[0].head, 1);
    mem.writeU16(layout.usedAddr + 2, 2);
    expect(drv.takeUsed().map((u) => u.token)).toEqual(['b', 'a']);

    const second = backend(buf, 2);
    expect(second.resubmitted).toBe(1);
    expect(popAll(second.dev, heads)).toEqual(['c']);
  });

  it('a buffer that does not fit the ring starts over and the front-end base stands', () => {
    const { drv, buf } = setup();
    offer(drv, 'a', 'b');
    // Another queue size recorded in it.
    new DataView(buf.buffer).setUint16(8, INFLIGHT_VERSION, true);
    new DataView(buf.buffer).setUint16(10, SIZE * 2, true);
    buf[16] = 1;
    const other = backend(buf, 1);
    expect(other.state).toBe('reset');
    expect(other.dev.nextAvailIdx).toBe(1);
    expect(popAll(other.dev, new Map())).toHaveLength(1);

    // More heads in flight than the driver ever made available: not this ring's record.
    const { buf: b2 } = setup();
    offer(drv, 'x');
    const dv = new DataView(b2.buffer);
    dv.setUint16(8, INFLIGHT_VERSION, true);
    dv.setUint16(10, SIZE, true);
    for (let h = 0; h < 4; h++) b2[16 + 16 * h] = 1;
    const hostile = backend(b2, 0);
    expect(hostile.state).toBe('reset');
    expect(hostile.resubmitted).toBe(0);
    expect(b2[16]).toBe(0);

    // Kept across a guest reset: its used index is another ring's, and with nothing in flight it resumes nothing.
    const { drv: d3, buf: b3 } = setup();
    offer(d3, 'y', 'z');
    const v3 = new DataView(b3.buffer);
    v3.setUint16(8, INFLIGHT_VERSION, true);
    v3.setUint16(10, SIZE, true);
    v3.setUint16(14, 500, true);
    const rebooted = backend(b3, 0);
    expect(rebooted.state).toBe('new');
    expect(popAll(rebooted.dev, new Map())).toHaveLength(2);
  });

  it('a resubmission met with the ring memory unmapped (REM_MEM_REG) is not used up: popped once the memory is back', () => {
    const { drv, buf } = setup();
    const heads = offer(drv, 'a', 'b');
    const first = backend(buf);
    first.dev.pop();
    first.dev.pop(); // both in flight when the back-end dies
    // The restarted back-end's own mapping of the front-end's memory, which the front-end may remove for a while.
    const spec = () => ({ guestAddr: 0, size: 1 << 20, fd: dup(mem.regions[0].fd), fdOffset: 0, userAddr: 0x4000_0000 });
    const own = GuestMemory.fromRegions([spec()], { seal: false });
    try {
      const dev = new DeviceQueue(own, layout, { eventIdx: false });
      expect(dev.trackInflight(new InflightRing(buf, SIZE), true)?.resubmitted).toBe(2);
      own.removeRegion(0, 1 << 20, 0x4000_0000);
      expect(() => dev.pop()).toThrow(RingMemoryError);
      expect(() => dev.pop()).toThrow(RingMemoryError);
      own.addRegion(spec());
      expect(popAll(dev, heads)).toEqual(['a', 'b']);
    } finally {
      own.close();
    }
  });

  it('undoPop clears what it gives back, and a queue of another size is refused', () => {
    const { drv, buf } = setup();
    offer(drv, 'a');
    const first = backend(buf);
    first.dev.pop();
    first.dev.undoPop(1);
    expect(backend(buf, 0).resubmitted).toBe(0);
    const dev = new DeviceQueue(mem, layout, { eventIdx: false });
    expect(() => dev.trackInflight(new InflightRing(new Uint8Array(inflightRegionSize(16)), 16), true)).toThrow(VirtqueueError);
  });
});
