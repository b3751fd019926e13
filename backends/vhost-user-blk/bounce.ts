import type { GuestMemory } from '../../protocol/memory/index.js';
import { preadvRaw, pwritevRaw } from '../../protocol/sys/fd.js';
import { ftruncate } from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { mapAnonymous, type Mapping } from '../../protocol/sys/mem.js';
import { IoVecArena } from '../../protocol/sys/uring.js';
import { readFromChain, writeToChain, type Segment } from '../../protocol/virtqueue/index.js';

const EIO = 5;
const GROW_STEP = 1 << 20;

/**
 * O_DIRECT I/O that the file cannot take as it is: a guest buffer off the device's alignment, or a
 * range that starts or ends inside a device block (512-byte sectors on a 4096-byte device). It goes
 * through an aligned buffer in the calling thread, as Cloud Hypervisor's RawFile does: a read reads
 * the blocks around the range and copies the part asked for; a write inside a block reads that block,
 * patches it and writes it back (the caller holds the WriteGate's lock around such a patch).
 * An image file whose end lies inside a block is cut back to `end` after a write of that last block.
 */
export class DirectBounce {
  private map: Mapping | null = null;
  private readonly iov = new IoVecArena(1, 1);

  constructor(
    private readonly fd: number,
    readonly alignment: number,
    private readonly end: number,
  ) {}

  /** True if writing this range means reading and patching a block (it starts or ends inside one). */
  patches(offset: number, len: number): boolean {
    return offset % this.alignment !== 0 || (offset + len) % this.alignment !== 0;
  }

  /** Reads `len` bytes at `offset` into the segments (after `skip` bytes); returns len or -errno. */
  read(mem: GuestMemory, segs: readonly Segment[], skip: number, offset: number, len: number): number {
    const lo = this.down(offset);
    const span = this.up(offset + len) - lo;
    const buf = this.buffer(span);
    const r = this.io(false, span, lo);
    if (r < 0) return r;
    if (r < offset - lo + len) return -EIO;
    writeToChain(mem, segs, skip, buf.subarray(offset - lo, offset - lo + len));
    return len;
  }

  /** Writes `len` bytes from the segments (after `skip` bytes) at `offset`; returns len or -errno. */
  write(mem: GuestMemory, segs: readonly Segment[], skip: number, offset: number, len: number): number {
    return this.put(offset, len, (dst) => readFromChain(mem, segs, skip, dst));
  }

  /** Writes `len` zero bytes at `offset`; returns len or -errno. */
  zero(offset: number, len: number): number {
    return this.put(offset, len, (dst) => dst.fill(0));
  }

  private put(offset: number, len: number, fill: (dst: Uint8Array) => void): number {
    const lo = this.down(offset);
    const hi = this.up(offset + len);
    const span = hi - lo;
    const buf = this.buffer(span);
    if (lo !== offset || hi !== offset + len) {
      // The blocks around the range, as they are now (a block past the end of the file reads short).
      const r = this.io(false, span, lo);
      if (r < 0) return r;
      if (r < span) buf.fill(0, r, span);
    }
    fill(buf.subarray(offset - lo, offset - lo + len));
    const w = this.io(true, span, lo);
    if (w < 0) return w;
    if (w !== span) return -EIO;
    if (hi > this.end) {
      // The whole block went to the file, past its end: no other write is in flight (the gate's lock).
      try {
        ftruncate(this.fd, this.end);
      } catch (e) {
        return e instanceof SysError ? -e.errno : -EIO;
      }
    }
    return len;
  }

  free(): void {
    this.map?.unmap();
    this.map = null;
    this.iov.free();
  }

  private io(write: boolean, span: number, at: number): number {
    this.iov.set(0, 0, Number((this.map as Mapping).ptr), span);
    const a = this.iov.slotAddress(0);
    return write ? pwritevRaw(this.fd, a, 1, at) : preadvRaw(this.fd, a, 1, at);
  }

  /** A page-aligned buffer of at least `span` bytes, kept for the next request. */
  private buffer(span: number): Uint8Array {
    if (this.map === null || this.map.size < span) {
      this.map?.unmap();
      this.map = mapAnonymous(Math.ceil(span / GROW_STEP) * GROW_STEP);
    }
    return this.map.bytes;
  }

  private down(x: number): number {
    return Math.floor(x / this.alignment) * this.alignment;
  }

  private up(x: number): number {
    return Math.ceil(x / this.alignment) * this.alignment;
  }
}

/** Indices in the image's shared flags (see BlkEngineImage.flags). */
const PATCH_LOCK = 2;
const WRITES = 3;

/**
 * Orders block patches (read-modify-write) against every other write of an image whose O_DIRECT block
 * is larger than a sector, across queue threads: flags[PATCH_LOCK] is 1 while a thread patches, and
 * flags[WRITES] counts the other writes in flight. A patch starts once none is in flight and none
 * starts during a patch, so a patch never writes stale bytes back over a newer write in its block.
 * `progress` reaps the caller's own completions (its writes may be the ones a patch waits for) and
 * says whether there were any to wait for.
 */
export class WriteGate {
  constructor(private readonly flags: Int32Array) {}

  /** Before a write that goes to the file as it is; leave() once it completed. */
  enter(progress: () => boolean): void {
    for (;;) {
      Atomics.add(this.flags, WRITES, 1);
      if (Atomics.load(this.flags, PATCH_LOCK) === 0) return;
      this.leave();
      this.waitWhile(PATCH_LOCK, (v) => v !== 0, progress);
    }
  }

  leave(): void {
    Atomics.sub(this.flags, WRITES, 1);
    Atomics.notify(this.flags, WRITES);
  }

  /** Before a patch: takes the lock, then waits for the writes in flight (this thread's included). */
  lock(progress: () => boolean): void {
    while (Atomics.compareExchange(this.flags, PATCH_LOCK, 0, 1) !== 0) this.waitWhile(PATCH_LOCK, (v) => v !== 0, progress);
    this.waitWhile(WRITES, (v) => v > 0, progress);
  }

  unlock(): void {
    Atomics.store(this.flags, PATCH_LOCK, 0);
    Atomics.notify(this.flags, PATCH_LOCK);
  }

  private waitWhile(index: number, busy: (v: number) => boolean, progress: () => boolean): void {
    for (;;) {
      const v = Atomics.load(this.flags, index);
      if (!busy(v)) return;
      if (!progress()) Atomics.wait(this.flags, index, v, 1);
    }
  }
}
