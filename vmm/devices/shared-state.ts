import { KumoError } from '../../protocol/errors.js';

export class ArenaError extends KumoError {}

/** One named block of the arena: all views cover the same bytes. */
export interface ArenaBlock {
  readonly name: string;
  readonly offset: number;
  readonly bytes: number;
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  readonly view: DataView;
}

const ALIGN = 8;

/**
 * Device register state shared by every thread that builds the device model (vCPU workers, main).
 * Allocation is a bump pointer, so identical construction order yields identical offsets in every
 * thread; names are recorded only to catch a thread that builds a different model.
 */
export class SharedArena {
  readonly sab: SharedArrayBuffer;
  private next = 0;
  private readonly names = new Map<string, number>();

  constructor(sab: SharedArrayBuffer) {
    if (sab.byteLength % 4 !== 0) throw new ArenaError('arena size must be a multiple of 4', { size: sab.byteLength });
    this.sab = sab;
  }

  static create(bytes = 1 << 20): SharedArena {
    return new SharedArena(new SharedArrayBuffer(bytes));
  }

  alloc(name: string, bytes: number): ArenaBlock {
    if (this.names.has(name)) throw new ArenaError('arena block allocated twice', { name });
    if (!Number.isInteger(bytes) || bytes <= 0) throw new ArenaError('bad arena block size', { name, bytes });
    const size = Math.ceil(bytes / ALIGN) * ALIGN;
    const offset = this.next;
    if (offset + size > this.sab.byteLength) {
      throw new ArenaError('arena exhausted', { name, bytes, used: offset, capacity: this.sab.byteLength });
    }
    this.next = offset + size;
    this.names.set(name, offset);
    return {
      name,
      offset,
      bytes: size,
      i32: new Int32Array(this.sab, offset, size / 4),
      u8: new Uint8Array(this.sab, offset, size),
      view: new DataView(this.sab, offset, size),
    };
  }

  /**
   * alloc() plus a one-time initialiser: the first thread to build the model writes power-on values,
   * later threads (built before the guest runs, or while it runs) keep the live state.
   */
  allocInit(name: string, bytes: number, init: (b: ArenaBlock) => void): ArenaBlock {
    const flag = this.alloc(`init:${name}`, 4).i32;
    const block = this.alloc(name, bytes);
    if (Atomics.compareExchange(flag, 0, 0, 1) === 0) init(block);
    return block;
  }

  /** True for the first thread that claims `name` (for multi-step initialisation). */
  claim(name: string): boolean {
    const flag = this.alloc(`claim:${name}`, 4).i32;
    return Atomics.compareExchange(flag, 0, 0, 1) === 0;
  }

  /** A mutex living in the arena (see ArenaLock). */
  lock(name: string): ArenaLock {
    return new ArenaLock(this.alloc(`lock:${name}`, 4).i32, 0);
  }

  get used(): number {
    return this.next;
  }
}

/**
 * Futex-style mutex over one Int32 slot: 0 free, 1 held, 2 held with waiters. Node allows Atomics.wait
 * on the main thread too, and critical sections are a few register accesses, so blocking is brief.
 */
export class ArenaLock {
  constructor(
    private readonly cells: Int32Array,
    private readonly index: number,
  ) {}

  acquire(): void {
    let c = Atomics.compareExchange(this.cells, this.index, 0, 1);
    if (c === 0) return;
    for (let spin = 0; spin < 100; spin++) {
      c = Atomics.compareExchange(this.cells, this.index, 0, 1);
      if (c === 0) return;
    }
    if (c !== 2) c = Atomics.exchange(this.cells, this.index, 2);
    while (c !== 0) {
      Atomics.wait(this.cells, this.index, 2);
      c = Atomics.exchange(this.cells, this.index, 2);
    }
  }

  /** Whether some thread holds it now. */
  get held(): boolean {
    return Atomics.load(this.cells, this.index) !== 0;
  }

  release(): void {
    if (Atomics.sub(this.cells, this.index, 1) !== 1) {
      Atomics.store(this.cells, this.index, 0);
      Atomics.notify(this.cells, this.index, 1);
    }
  }

  with<T>(fn: () => T): T {
    this.acquire();
    try {
      return fn();
    } finally {
      this.release();
    }
  }
}

/**
 * Waits (Atomics.wait, a worker thread) until the counter at cells[index] has reached `target` (wrapping Int32
 * arithmetic); false when `timeoutMs` passed first.
 */
export function waitForCount(cells: Int32Array, index: number, target: number, timeoutMs: number): boolean {
  const until = Date.now() + timeoutMs;
  for (let v = Atomics.load(cells, index); ((v - target) | 0) < 0; v = Atomics.load(cells, index)) {
    const left = until - Date.now();
    if (left <= 0) return false;
    Atomics.wait(cells, index, v, left);
  }
  return true;
}
