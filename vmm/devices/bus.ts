import { KumoError } from '../../protocol/errors.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import type { ArenaLock, SharedArena } from './shared-state.js';
import type { BusDevice } from './types.js';

const log = logger('bus');
/** A device failing on every access the guest makes must not write a line per access. */
const failures = new WarnLimiter(log);

export class BusError extends KumoError {}

const TWO32 = 0x1_0000_0000;

/**
 * One range of a bus. Its base lives in the shared arena so a BAR moved by the guest through one
 * vCPU's model is seen by every other thread's bus (they resync on the bus generation counter).
 */
export class BusRange {
  constructor(
    readonly bus: Bus,
    readonly name: string,
    readonly len: number,
    readonly device: BusDevice,
    readonly lock: ArenaLock,
    private readonly cell: Int32Array,
  ) {}

  get base(): number {
    return (Atomics.load(this.cell, 0) >>> 0) + (Atomics.load(this.cell, 1) >>> 0) * TWO32;
  }

  /** @internal */
  storeBase(base: number): void {
    Atomics.store(this.cell, 0, base % TWO32 | 0);
    Atomics.store(this.cell, 1, Math.floor(base / TWO32) | 0);
  }

  /** Relocate (guest BAR programming). Throws BusError on overlap; the range stays where it was. */
  move(newBase: number): void {
    this.bus.move(this, newBase);
  }
}

/** Bus accesses under way on this thread, and what devices asked to run once the outermost one let go of its lock. */
let accessDepth = 0;
const afterAccess: (() => void)[] = [];

/**
 * Runs `fn` once the bus access that is calling the device has released the device's lock (at once outside one): a
 * device that must wait for another thread waits there, since that thread may need the same lock meanwhile.
 */
export function afterBusAccess(fn: () => void): void {
  if (accessDepth === 0) fn();
  else afterAccess.push(fn);
}

function endAccess(): void {
  if (--accessDepth > 0) return;
  for (const fn of afterAccess.splice(0)) fn();
}

/** A PIO or MMIO address space: [base, base+len) → device, sorted for binary search. */
export class Bus {
  private readonly ranges: BusRange[] = [];
  private sorted: BusRange[] = [];
  private bases: number[] = [];
  private readonly gen: Int32Array;
  private seenGen = -1;

  constructor(
    readonly kind: 'pio' | 'mmio',
    private readonly arena: SharedArena,
  ) {
    this.gen = arena.alloc(`bus:${kind}:gen`, 4).i32;
  }

  insert(device: BusDevice, base: number, len: number, name: string): BusRange {
    checkRange(this.kind, name, base, len);
    const block = this.arena.alloc(`bus:${this.kind}:${name}`, 8);
    const lock = device.lock ?? this.arena.lock(`bus:${this.kind}:${name}`);
    const range = new BusRange(this, name, len, device, lock, block.i32);
    this.sync();
    const clash = this.overlapping(base, len, null);
    if (clash) throw new BusError('bus range overlaps', { bus: this.kind, name, base, len, with: clash.name });
    // Every thread inserts the same ranges in the same order; storing the (same) base again is harmless.
    range.storeBase(base);
    this.ranges.push(range);
    this.rebuild();
    return range;
  }

  /** @internal use BusRange.move */
  move(range: BusRange, newBase: number): void {
    checkRange(this.kind, range.name, newBase, range.len);
    this.sync();
    const clash = this.overlapping(newBase, range.len, range);
    if (clash) {
      throw new BusError('bus relocation overlaps', { bus: this.kind, name: range.name, newBase, with: clash.name });
    }
    range.storeBase(newBase);
    Atomics.add(this.gen, 0, 1);
    this.sync();
  }

  /** Finds the range holding [addr, addr+size). */
  find(addr: number, size = 1): BusRange | null {
    this.sync();
    const b = this.bases;
    let lo = 0;
    let hi = b.length - 1;
    let idx = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid] <= addr) {
        idx = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (idx < 0) return null;
    const r = this.sorted[idx];
    return addr + size <= b[idx] + r.len ? r : null;
  }

  /** Returns false (and fills data with 0xff) when nothing decodes the address. */
  read(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr, data.length);
    if (!r) {
      data.fill(0xff);
      return false;
    }
    const base = r.base;
    r.lock.acquire();
    try {
      r.device.read(addr - base, data);
    } catch (err) {
      data.fill(0xff);
      failures.warn({ err, bus: this.kind, device: r.name, addr, len: data.length }, 'device read failed');
    } finally {
      r.lock.release();
    }
    return true;
  }

  write(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr, data.length);
    if (!r) return false;
    const base = r.base;
    accessDepth++;
    r.lock.acquire();
    try {
      r.device.write(addr - base, data);
    } catch (err) {
      failures.warn({ err, bus: this.kind, device: r.name, addr, len: data.length }, 'device write failed');
    } finally {
      r.lock.release();
      endAccess();
    }
    return true;
  }

  list(): { name: string; base: number; len: number }[] {
    this.sync();
    return this.sorted.map((r, i) => ({ name: r.name, base: this.bases[i], len: r.len }));
  }

  private overlapping(base: number, len: number, except: BusRange | null): BusRange | null {
    for (const r of this.ranges) {
      if (r === except) continue;
      const rb = r.base;
      if (base < rb + r.len && rb < base + len) return r;
    }
    return null;
  }

  private sync(): void {
    const g = Atomics.load(this.gen, 0);
    if (g !== this.seenGen) {
      this.seenGen = g;
      this.rebuild();
    }
  }

  private rebuild(): void {
    const pairs = this.ranges.map((r) => [r.base, r] as const).sort((a, b) => a[0] - b[0]);
    this.bases = pairs.map((p) => p[0]);
    this.sorted = pairs.map((p) => p[1]);
  }
}

function checkRange(kind: string, name: string, base: number, len: number): void {
  const limit = kind === 'pio' ? 0x10000 : 2 ** 52;
  if (!Number.isInteger(base) || !Number.isInteger(len) || base < 0 || len <= 0 || base + len > limit) {
    throw new BusError('bad bus range', { bus: kind, name, base, len });
  }
}
