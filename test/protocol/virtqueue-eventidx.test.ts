import { afterAll, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { compactLayout, DeviceQueue, DriverQueue, vringNeedEvent } from '../../protocol/virtqueue/index.js';

describe('vringNeedEvent', () => {
  it.each([
    // [event, new, old, expected]
    [0, 1, 0, true],
    [1, 1, 0, false],
    [5, 10, 4, true],
    [4, 10, 4, true],
    [10, 10, 4, false],
    [9, 10, 4, true],
    // wrap-around: old=0xfffe, new=0x0001
    [0xffff, 1, 0xfffe, true],
    [0, 1, 0xfffe, true],
    [0xfffe, 1, 0xfffe, true],
    [1, 1, 0xfffe, false],
    [0xfffd, 1, 0xfffe, false],
    [0xffff, 0, 0xffff, true],
    [0xfffe, 0, 0xffff, false],
  ])('event=%i new=%i old=%i → %s', (e, n, o, want) => {
    expect(vringNeedEvent(e, n, o)).toBe(want);
  });
});

describe('notification suppression', () => {
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
  afterAll(() => mem.close());
  const seg = { addr: 0x80000, len: 64 };

  it('without EVENT_IDX: NO_NOTIFY and NO_INTERRUPT flags', () => {
    const layout = compactLayout(0, 8);
    const drv = new DriverQueue<number>(mem, layout, { eventIdx: false });
    const dev = new DeviceQueue(mem, layout, { eventIdx: false });
    drv.add([seg], [], 1);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);
    expect(drv.kickNeeded()).toBe(false); // nothing new published
    dev.disableNotifications();
    drv.add([seg], [], 2);
    drv.publish();
    expect(drv.kickNeeded()).toBe(false);
    expect(dev.enableNotifications()).toBe(true); // work arrived while disabled
    dev.pop();
    dev.pop();
    expect(dev.enableNotifications()).toBe(false);
    drv.add([seg], [], 3);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);

    dev.pushUsed(0, 0);
    dev.publishUsed();
    expect(dev.needsNotification()).toBe(true);
    expect(dev.needsNotification()).toBe(false); // nothing new published
    drv.disableInterrupts();
    dev.pushUsed(1, 0);
    dev.publishUsed();
    expect(dev.needsNotification()).toBe(false);
    expect(drv.enableInterrupts()).toBe(true);
  });

  it('with EVENT_IDX: used_event / avail_event decide, across the 16-bit wrap', () => {
    const layout = compactLayout(0x1000, 8);
    const drv = new DriverQueue<number>(mem, layout, { eventIdx: true });
    const dev = new DeviceQueue(mem, layout, { eventIdx: true });
    let kicks = 0;
    let irqs = 0;
    let extra = 0;
    let taken = 0;
    let n = 0;
    // One request per round: the device wants a kick for each (avail_event follows pop) and the
    // driver wants an interrupt for each (used_event follows takeUsed). Run past 65536 to wrap.
    for (let round = 0; round < 65_540; round++) {
      drv.add([seg], [], n++);
      drv.publish();
      if (drv.kickNeeded()) kicks++;
      const c = dev.pop()!;
      if (dev.pop() !== null) extra++;
      dev.pushUsed(c.head, 0);
      dev.publishUsed();
      if (dev.needsNotification()) irqs++;
      taken += drv.takeUsed().length;
    }
    expect(extra).toBe(0);
    expect(taken).toBe(65_540);
    expect(kicks).toBe(65_540);
    expect(irqs).toBe(65_540);
  });

  it('with EVENT_IDX: batches get one kick / one interrupt, and suppression holds at the wrap', () => {
    const layout = compactLayout(0x2000, 8);
    const drv = new DriverQueue<number>(mem, layout, { eventIdx: true });
    const dev = new DeviceQueue(mem, layout, { eventIdx: true });
    // Move both indices close to the wrap point.
    for (let i = 0; i < 65_533; i++) {
      drv.add([seg], [], i);
      drv.publish();
      const c = dev.pop()!;
      dev.pushUsed(c.head, 0);
      dev.publishUsed();
      drv.takeUsed();
    }
    drv.kickNeeded();
    dev.needsNotification();
    expect(dev.nextAvailIdx).toBe(65_533);
    // Batch of 6 crossing 65535 → 0: the device's avail_event is 65533, so exactly one kick.
    for (let i = 0; i < 6; i++) drv.add([seg], [], i);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);
    // The device is busy with notifications disabled: more work must not kick.
    dev.disableNotifications();
    const heads: number[] = [];
    for (let c = dev.pop(); c; c = dev.pop()) heads.push(c.head);
    expect(heads).toHaveLength(6);
    expect(dev.nextAvailIdx).toBe(3); // wrapped
    drv.add([seg], [], 99);
    drv.publish();
    expect(drv.kickNeeded()).toBe(false);
    expect(dev.enableNotifications()).toBe(true);
    heads.push(dev.pop()!.head);
    expect(dev.enableNotifications()).toBe(false);
    // Used side: driver asks for an interrupt after the next used entry (used_event = 65533).
    for (const h of heads.slice(0, 3)) dev.pushUsed(h, 0);
    dev.publishUsed();
    expect(dev.needsNotification()).toBe(true);
    // Driver has not consumed yet, so used_event is still behind: no more interrupts.
    for (const h of heads.slice(3)) dev.pushUsed(h, 0);
    dev.publishUsed();
    expect(dev.needsNotification()).toBe(false);
    expect(drv.takeUsed()).toHaveLength(7);
    // Now used_event = 4 (wrapped); the next completion interrupts.
    drv.add([seg], [], 100);
    drv.publish();
    expect(drv.kickNeeded()).toBe(true);
    dev.pushUsed(dev.pop()!.head, 0);
    dev.publishUsed();
    expect(dev.needsNotification()).toBe(true);
  });
});
