// The O_DIRECT write gate: a patch waits for the writes in flight in its stripes and for no others.
import { describe, expect, it } from 'vitest';
import { IMAGE_FLAGS_LENGTH, WriteGate } from '../../backends/vhost-user-blk/bounce.js';

const MiB = 1 << 20;

/** A progress callback that fails the test instead of letting a wait spin forever. */
function progressOr(onCall: () => boolean, limit = 5): { progress: () => boolean; calls: () => number } {
  let n = 0;
  return {
    progress: () => {
      if (++n > limit) throw new Error('the gate kept waiting');
      return onCall();
    },
    calls: () => n,
  };
}

describe('WriteGate', () => {
  it('maps a range to the stripes of the 1 MiB regions it touches', () => {
    expect(WriteGate.stripes(0, 512)).toBe(1);
    expect(WriteGate.stripes(MiB - 512, 512)).toBe(1);
    expect(WriteGate.stripes(MiB - 512, 1024)).toBe(0b11);
    expect(WriteGate.stripes(5 * MiB, 4096)).toBe(1 << 5);
    // Regions wrap around the 32 stripes.
    expect(WriteGate.stripes(33 * MiB, 4096)).toBe(1 << 1);
    expect(WriteGate.stripes(31 * MiB + 4096, MiB)).toBe((2 ** 31 + 1) >>> 0);
    expect(WriteGate.stripes(0, 64 * MiB)).toBe(0xffffffff);
    expect(WriteGate.stripes(7 * MiB, 0)).toBe(1 << 7);
  });

  it('lets a patch run beside a write in another stripe and makes it wait for one in its own', () => {
    const flags = new Int32Array(new SharedArrayBuffer(IMAGE_FLAGS_LENGTH * 4));
    const gate = new WriteGate(flags);
    const a = WriteGate.stripes(3 * MiB, 4096);
    const b = WriteGate.stripes(9 * MiB, 4096);
    const never = progressOr(() => true, 0);
    gate.enter(b, never.progress);

    // A patch in stripe a: the write in b is no reason to wait.
    gate.lock(a, never.progress);
    expect(never.calls()).toBe(0);
    gate.unlock(a);

    // A write in a, then a patch there: it waits until that write completes (progress completes it).
    gate.enter(a, never.progress);
    const done = progressOr(() => {
      gate.leave(a);
      return true;
    });
    gate.lock(a, done.progress);
    expect(done.calls()).toBe(1);

    // While the patch holds a, a write spanning a and b steps back out of both and waits for the lock.
    const span = a | b;
    const waits = progressOr(() => {
      gate.unlock(a);
      return true;
    });
    gate.enter(span, waits.progress);
    expect(waits.calls()).toBe(1);
    gate.leave(span);
    gate.leave(b);
    expect(Array.from(flags.subarray(2))).toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));

    // Every stripe, the 32nd included: a write in the last one holds back a patch there.
    const all = WriteGate.stripes(0, 64 * MiB);
    const last = WriteGate.stripes(31 * MiB, 4096);
    gate.enter(all, never.progress);
    expect(Array.from(flags.subarray(2 + 32))).toEqual(new Array(32).fill(1));
    gate.leave(all & ~last);
    const lastDone = progressOr(() => {
      gate.leave(last);
      return true;
    });
    gate.lock(all, lastDone.progress);
    expect(lastDone.calls()).toBe(1);
    expect(Array.from(flags.subarray(2, 2 + 32))).toEqual(new Array(32).fill(1));
    gate.unlock(all);
    expect(Array.from(flags.subarray(2))).toEqual(new Array(IMAGE_FLAGS_LENGTH - 2).fill(0));
  });
});
