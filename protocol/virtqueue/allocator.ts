import { KumoError } from '../errors.js';

export class GuestAllocatorError extends KumoError {}

interface Block {
  addr: number;
  size: number;
}

/**
 * First-fit allocator for driver buffers inside a guest address window (ring memory, indirect tables,
 * request headers). Frees coalesce with their neighbours. Not for hot paths with thousands of blocks.
 */
export class GuestAllocator {
  private free_: Block[];
  private readonly used = new Map<number, number>();

  constructor(
    readonly base: number,
    readonly size: number,
  ) {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0) {
      throw new GuestAllocatorError('invalid allocator window', { base, size });
    }
    this.free_ = [{ addr: base, size }];
  }

  /** Bytes not allocated (possibly fragmented). */
  get available(): number {
    let n = 0;
    for (const b of this.free_) n += b.size;
    return n;
  }

  /** Returns the guest address of `size` bytes aligned to `align` (a power of two), or null if no block fits. */
  alloc(size: number, align = 8): number | null {
    if (!Number.isSafeInteger(size) || size <= 0 || !Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new GuestAllocatorError('invalid allocation request', { size, align });
    }
    for (let i = 0; i < this.free_.length; i++) {
      const b = this.free_[i];
      const addr = Math.ceil(b.addr / align) * align;
      const pad = addr - b.addr;
      if (pad + size > b.size) continue;
      const tail = b.size - pad - size;
      const replacement: Block[] = [];
      if (pad > 0) replacement.push({ addr: b.addr, size: pad });
      if (tail > 0) replacement.push({ addr: addr + size, size: tail });
      this.free_.splice(i, 1, ...replacement);
      this.used.set(addr, size);
      return addr;
    }
    return null;
  }

  /** Like alloc() but throws when full. */
  allocOrThrow(size: number, align = 8): number {
    const a = this.alloc(size, align);
    if (a === null) throw new GuestAllocatorError('guest allocator is out of space', { size, align, available: this.available });
    return a;
  }

  free(addr: number): void {
    const size = this.used.get(addr);
    if (size === undefined) throw new GuestAllocatorError('free of an address that was not allocated', { addr });
    this.used.delete(addr);
    let i = this.free_.findIndex((b) => b.addr > addr);
    if (i < 0) i = this.free_.length;
    this.free_.splice(i, 0, { addr, size });
    // Merge with the following block, then with the preceding one.
    const cur = this.free_[i];
    const nxt = this.free_[i + 1];
    if (nxt && cur.addr + cur.size === nxt.addr) {
      cur.size += nxt.size;
      this.free_.splice(i + 1, 1);
    }
    const prv = this.free_[i - 1];
    if (prv && prv.addr + prv.size === cur.addr) {
      prv.size += cur.size;
      this.free_.splice(i, 1);
    }
  }
}
