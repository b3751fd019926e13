// Dirty logging (vhost-user migration): which guest pages a device marks in the front-end's bitmap, and when.
import { afterAll, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import {
  ChainError, compactLayout, DeviceQueue, DirtyLog, DriverQueue, RingDirtyLog, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
} from '../../protocol/virtqueue/index.js';
import { offer, writeDesc } from './virtqueue-helpers.js';

const SIZE = 8;
const PAGE = 4096;
const layout = compactLayout(0x1000, SIZE);
const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
afterAll(() => mem.close());

/** Pages whose bit is set in `bits`. */
function marked(bits: Uint8Array): number[] {
  const out: number[] = [];
  bits.forEach((b, i) => {
    for (let k = 0; k < 8; k++) if (b & (1 << k)) out.push(i * 8 + k);
  });
  return out;
}

const page = (gpa: number) => Math.floor(gpa / PAGE);

function setup(eventIdx = true): { drv: DriverQueue<string>; dev: DeviceQueue; ring: RingDirtyLog; bits: Uint8Array } {
  mem.slice(0x1000, 0x2000).fill(0);
  const drv = new DriverQueue<string>(mem, layout, { eventIdx });
  const dev = new DeviceQueue(mem, layout, { eventIdx });
  const ring = new RingDirtyLog(SIZE, layout.usedAddr);
  dev.trackDirty(ring);
  return { drv, dev, ring, bits: new Uint8Array(32) };
}

describe('DirtyLog', () => {
  it('marks every page a range touches, in whole bytes and partial ones', () => {
    const bits = new Uint8Array(8);
    const log = new DirtyLog(bits);
    log.mark(PAGE * 3 + 100, 1);
    expect(marked(bits)).toEqual([3]);
    log.mark(PAGE * 6 - 1, 2); // straddles pages 5 and 6
    expect(marked(bits)).toEqual([3, 5, 6]);
    log.mark(PAGE * 10, PAGE * 20); // pages 10..29: part of byte 1, bytes 2 whole, part of byte 3
    expect(marked(bits)).toEqual([3, 5, 6, ...Array.from({ length: 20 }, (_, i) => 10 + i)]);
    expect(bits[2]).toBe(0xff);
    log.mark(PAGE * 40, 0);
    expect(marked(bits)).not.toContain(40);
  });

  it('counts pages past its end instead of writing there', () => {
    const backing = new Uint8Array(4);
    const log = new DirtyLog(backing.subarray(0, 2)); // 16 pages
    log.mark(PAGE * 14, PAGE * 4); // 14, 15 inside; 16, 17 outside
    expect(marked(backing)).toEqual([14, 15]);
    expect(log.missedPages).toBe(2);
  });
});

describe('DeviceQueue with a dirty log', () => {
  it('marks a used chain\'s writable buffers and the used ring, not its readable ones', () => {
    const { drv, dev, ring, bits } = setup();
    ring.log = new DirtyLog(bits);
    drv.add([{ addr: 0x10000, len: 512 }], [{ addr: 0x20000, len: 2 * PAGE }, { addr: 0x30000, len: 1 }], 'a');
    drv.publish();
    const c = dev.pop()!;
    dev.pushUsed(c.head, 2 * PAGE + 1);
    dev.publishUsed();
    const used = page(layout.usedAddr);
    expect(marked(bits)).toEqual([used, page(0x20000), page(0x20000) + 1, page(0x30000)].sort((x, y) => x - y));
  });

  it('marks a chain taken before logging began once it is used while logging', () => {
    const { drv, dev, ring, bits } = setup();
    drv.add([], [{ addr: 0x40000, len: PAGE }], 'a');
    drv.publish();
    const c = dev.pop()!;
    // The front-end turns logging on (SET_LOG_BASE, LOG_ALL) while the request is in flight.
    ring.log = new DirtyLog(bits);
    dev.pushUsed(c.head, PAGE);
    expect(marked(bits)).toContain(page(0x40000));
  });

  it('marks nothing while the front-end does not log, and nothing for a chain used with 0 bytes written', () => {
    const { drv, dev, ring, bits } = setup();
    drv.add([], [{ addr: 0x40000, len: PAGE }], 'a');
    drv.publish();
    dev.pushUsed(dev.pop()!.head, PAGE);
    dev.publishUsed();
    expect(marked(bits)).toEqual([]);
    ring.log = new DirtyLog(bits);
    drv.add([], [{ addr: 0x50000, len: PAGE }], 'b');
    drv.publish();
    dev.pushUsed(dev.pop()!.head, 0);
    expect(marked(bits)).not.toContain(page(0x50000));
  });

  it('marks the used ring at the front-end\'s log address, and not at all without one', () => {
    const { drv, dev, ring, bits } = setup();
    ring.log = new DirtyLog(bits);
    ring.usedAddr = 0x70000; // the front-end names where the used ring is for logging (VRING_F_LOG)
    drv.add([], [{ addr: 0x40000, len: 1 }], 'a');
    drv.publish();
    dev.pushUsed(dev.pop()!.head, 1);
    dev.publishUsed();
    expect(marked(bits)).toEqual([page(0x40000), page(0x70000)]);
    bits.fill(0);
    ring.usedAddr = null;
    drv.add([], [{ addr: 0x50000, len: 1 }], 'b');
    drv.publish();
    dev.pushUsed(dev.pop()!.head, 1);
    dev.publishUsed();
    expect(marked(bits)).toEqual([page(0x50000)]);
  });

  it('marks the avail_event and used flags it writes', () => {
    for (const eventIdx of [true, false]) {
      const { drv, dev, ring, bits } = setup(eventIdx);
      ring.log = new DirtyLog(bits);
      ring.usedAddr = 0x70000;
      dev.disableNotifications();
      dev.enableNotifications();
      expect(marked(bits)).toEqual([page(0x70000 + (eventIdx ? 4 + 8 * SIZE : 0))]);
      bits.fill(0);
      drv.add([], [{ addr: 0x40000, len: 1 }], 'a');
      drv.publish();
      dev.pop();
      // With EVENT_IDX the pop moves avail_event.
      expect(marked(bits)).toEqual(eventIdx ? [page(0x70000 + 4 + 8 * SIZE)] : []);
    }
  });

  it('marks the status buffer a device answers a malformed chain through', () => {
    const { dev, ring, bits } = setup(false);
    ring.log = new DirtyLog(bits);
    // header readable, a data buffer outside guest memory, then a status byte the device can still write
    writeDesc(mem, layout.descAddr, 0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 1);
    writeDesc(mem, layout.descAddr, 1, 2 ** 40, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
    writeDesc(mem, layout.descAddr, 2, 0x60000, 1, VIRTQ_DESC_F_WRITE);
    offer(mem, layout, 0);
    let err: ChainError | null = null;
    try {
      dev.pop();
    } catch (e) {
      err = e as ChainError;
    }
    expect(err?.reach?.lastWritable).toEqual({ addr: 0x60000, len: 1 });
    mem.writeU8(0x60000, 1); // IOERR
    dev.pushUsed(0, 1);
    expect(marked(bits)).toContain(page(0x60000));
  });
});
