import type { GuestMemory } from '../../protocol/memory/index.js';
import { preadvRaw, pwritevRaw } from '../../protocol/sys/fd.js';
import { ftruncate } from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { mapAnonymous, type Mapping } from '../../protocol/sys/mem.js';
import { IoVecArena } from '../../protocol/sys/uring.js';
import { readFromChain, writeToChain, type Segment } from '../../protocol/virtqueue/index.js';

const EIO = 5;
/** The aligned buffer's size: larger requests go through it a chunk at a time, so a guest cannot grow it. */
const CHUNK = 1 << 20;

/**
 * O_DIRECT I/O that the file cannot take as it is: a guest buffer off the device's alignment, or a
 * range that starts or ends inside a device block (512-byte sectors on a 4096-byte device). It goes
 * through an aligned buffer in the calling thread, as Cloud Hypervisor's RawFile does, `chunk` bytes
 * at a time: a read reads the blocks around the range and copies the part asked for; a write inside a block
 * reads that block, patches it and writes it back (the caller holds the WriteGate's lock around such a
 * patch). An image file whose end lies inside a block is cut back to `end` after a write of that block.
 */
export class DirectBounce {
  private map: Mapping | null = null;
  private readonly iov = new IoVecArena(1, 1);

  constructor(
    private readonly fd: number,
    readonly alignment: number,
    private readonly end: number,
    /** A multiple of `alignment`. */
    private readonly chunk = CHUNK,
  ) {}

  /** True if writing this range means reading and patching a block (it starts or ends inside one). */
  patches(offset: number, len: number): boolean {
    return offset % this.alignment !== 0 || (offset + len) % this.alignment !== 0;
  }

  /** Reads `len` bytes at `offset` into the segments (after `skip` bytes); returns len or -errno. */
  read(mem: GuestMemory, segs: readonly Segment[], skip: number, offset: number, len: number): number {
    return this.chunked(offset, len, (buf, at, span, from, to) => {
      const r = this.io(false, span, at);
      if (r < 0) return r;
      if (r < to - at) return -EIO;
      writeToChain(mem, segs, skip + from - offset, buf.subarray(from - at, to - at));
      return 0;
    });
  }

  /** Writes `len` bytes from the segments (after `skip` bytes) at `offset`; returns len or -errno. */
  write(mem: GuestMemory, segs: readonly Segment[], skip: number, offset: number, len: number): number {
    return this.put(offset, len, (dst, pos) => readFromChain(mem, segs, skip + pos, dst));
  }

  /** Writes `len` zero bytes at `offset`; returns len or -errno. */
  zero(offset: number, len: number): number {
    return this.put(offset, len, (dst) => dst.fill(0));
  }

  /** `fill(dst, pos)` puts the bytes at `pos` into the range into dst. */
  private put(offset: number, len: number, fill: (dst: Uint8Array, pos: number) => void): number {
    return this.chunked(offset, len, (buf, at, span, from, to) => {
      // The blocks the range starts and ends inside, as they are now (past the end of the file reads short).
      const head = from - at;
      const r = head > 0 ? this.readBlock(at) : 0;
      if (r < 0) return r;
      const tailBlock = this.down(to);
      const t = to - at < span && (head === 0 || tailBlock !== at) ? this.readBlock(tailBlock, tailBlock - at) : 0;
      if (t < 0) return t;
      fill(buf.subarray(head, to - at), from - offset);
      const w = this.io(true, span, at);
      if (w < 0) return w;
      if (w !== span) return -EIO;
      return at + span <= this.end ? 0 : cutBack(this.fd, this.end);
    });
  }

  /**
   * Runs `step` over the aligned pieces of the buffer's size that cover [offset, offset + len): the piece
   * [at, at + span) of the file, of which [from, to) is in the range. Returns len, or the first -errno.
   */
  private chunked(offset: number, len: number, step: (buf: Uint8Array, at: number, span: number, from: number, to: number) => number): number {
    const buf = this.buffer();
    const stop = offset + len;
    for (let at = this.down(offset); at < stop; at += this.chunk) {
      const span = Math.min(this.chunk, this.up(stop) - at);
      const r = step(buf, at, span, Math.max(offset, at), Math.min(stop, at + span));
      if (r < 0) return r;
    }
    return len;
  }

  /** Reads the block at file offset `at` into the buffer at `bufAt` (zeroes past the file's end); 0 or -errno. */
  private readBlock(at: number, bufAt = 0): number {
    const r = this.io(false, this.alignment, at, bufAt);
    if (r < 0) return r;
    if (r < this.alignment) (this.map as Mapping).bytes.fill(0, bufAt + r, bufAt + this.alignment);
    return 0;
  }

  free(): void {
    this.map?.unmap();
    this.map = null;
    this.iov.free();
  }

  private io(write: boolean, span: number, at: number, bufAt = 0): number {
    this.iov.set(0, 0, Number((this.map as Mapping).ptr) + bufAt, span);
    const a = this.iov.slotAddress(0);
    return write ? pwritevRaw(this.fd, a, 1, at) : preadvRaw(this.fd, a, 1, at);
  }

  /** The page-aligned buffer, made on first use and kept. */
  private buffer(): Uint8Array {
    this.map ??= mapAnonymous(this.chunk);
    return this.map.bytes;
  }

  private down(x: number): number {
    return Math.floor(x / this.alignment) * this.alignment;
  }

  private up(x: number): number {
    return Math.ceil(x / this.alignment) * this.alignment;
  }
}

/**
 * After a write of whole blocks that reached past the end of an image file (O_DIRECT writes whole blocks):
 * cuts the file back to `end`. The caller holds every gate stripe, so no other write runs. 0 or -errno.
 */
export function cutBack(fd: number, end: number): number {
  try {
    ftruncate(fd, end);
    return 0;
  } catch (e) {
    return e instanceof SysError ? -e.errno : -EIO;
  }
}

/** Largest request the pool serves; larger ones are bounced in the queue thread, a chunk at a time. */
const POOLED_MAX = 1 << 20;
/** Bytes of pooled buffers one queue may hold. */
const POOL_LIMIT = 16 << 20;

/**
 * Aligned buffers for the O_DIRECT requests PooledIo serves through io_uring. Buffers come in power-of-two
 * sizes, are kept for reuse, and stop at POOL_LIMIT bytes in all: past that, take() says no and the caller
 * bounces the request in its own thread (DirectBounce).
 */
export class BouncePool {
  private readonly idle = new Map<number, Mapping[]>();
  private bytes = 0;

  constructor(private readonly limit = POOL_LIMIT) {}

  /** A page-aligned buffer of at least `len` bytes, or null (too large, or the pool is at its limit). */
  take(len: number): Mapping | null {
    if (len > POOLED_MAX) return null;
    let size = 4096;
    while (size < len) size *= 2;
    const kept = this.idle.get(size)?.pop();
    if (kept !== undefined) return kept;
    if (this.bytes + size > this.limit) return null;
    this.bytes += size;
    return mapAnonymous(size);
  }

  give(m: Mapping): void {
    const list = this.idle.get(m.size);
    if (list === undefined) this.idle.set(m.size, [m]);
    else list.push(m);
  }

  /** Unmaps every buffer; all must have been given back. */
  free(): void {
    for (const list of this.idle.values()) for (const m of list) m.unmap();
    this.idle.clear();
    this.bytes = 0;
  }
}

/** The gate's stripes: a write waits only for patches in the stripes its range falls in, and a patch only for them. */
const STRIPES = 32;
/** Bytes of the disk per stripe before the stripes wrap around. */
const REGION_SHIFT = 20;
/** Where the gate starts in the image's shared flags (see BlkEngineImage.flags): STRIPES locks, then STRIPES counts. */
const GATE_BASE = 2;
/** Length of an image's shared flags array, the gate included. */
export const IMAGE_FLAGS_LENGTH = GATE_BASE + 2 * STRIPES;
const ALL_STRIPES = 0xffffffff;
const LOCKS = GATE_BASE;
const WRITES = GATE_BASE + STRIPES;

/**
 * Orders block patches (read-modify-write) against the other writes of an image whose O_DIRECT block is
 * larger than a sector, across queue threads. The disk is cut into 1 MiB regions, which map onto 32
 * stripes; each stripe has a lock, held while a thread patches a block there, and a count of the other
 * writes in flight there. A patch starts once no write is in flight in its stripes, and no write starts
 * in them during the patch, so a patch never writes stale bytes back over a newer write in its block;
 * patches and writes in other stripes go on meanwhile. Stripes are taken in ascending order.
 * `progress` reaps the caller's own completions (its writes may be the ones a patch waits for) and
 * says whether there were any to wait for.
 */
export class WriteGate {
  constructor(private readonly flags: Int32Array) {}

  /**
   * The stripes a write takes: its own, or every one for a patch whose last block reaches past `end`, the
   * image file's size (it cuts the file back after, with no other write running).
   */
  static stripesFor(offset: number, len: number, patch: boolean, alignment: number, end: number): number {
    return patch && Math.ceil((offset + len) / alignment) * alignment > end ? ALL_STRIPES : WriteGate.stripes(offset, len);
  }

  /** The stripes a write of `len` bytes at `offset` falls in, as a bit mask (never 0). */
  static stripes(offset: number, len: number): number {
    const first = Math.floor(offset / 2 ** REGION_SHIFT);
    const last = Math.floor((offset + Math.max(len, 1) - 1) / 2 ** REGION_SHIFT);
    if (last - first + 1 >= STRIPES) return ALL_STRIPES;
    let mask = 0;
    for (let r = first; r <= last; r++) mask |= 1 << (r % STRIPES);
    return mask >>> 0;
  }

  /** Before a write that goes to the file as it is, in `mask`'s stripes; leave(mask) once it completed. */
  enter(mask: number, progress: () => boolean): void {
    for (;;) {
      let entered = 0;
      let blocked = -1;
      for (let m = mask | 0; m !== 0; m &= m - 1) {
        const s = lowestBit(m);
        Atomics.add(this.flags, WRITES + s, 1);
        entered |= 1 << s;
        if (Atomics.load(this.flags, LOCKS + s) !== 0) {
          blocked = s;
          break;
        }
      }
      if (blocked < 0) return;
      // Step back out of the stripes entered so far, then wait for the patch that holds this one.
      this.leave(entered);
      this.waitWhile(LOCKS + blocked, (v) => v !== 0, progress);
    }
  }

  leave(mask: number): void {
    for (let m = mask | 0; m !== 0; m &= m - 1) {
      const s = lowestBit(m);
      Atomics.sub(this.flags, WRITES + s, 1);
      Atomics.notify(this.flags, WRITES + s);
    }
  }

  /** Before a patch: takes the locks of `mask`'s stripes, then waits for the writes in flight there (this thread's included). */
  lock(mask: number, progress: () => boolean): void {
    for (let m = mask | 0; m !== 0; m &= m - 1) {
      const s = lowestBit(m);
      while (Atomics.compareExchange(this.flags, LOCKS + s, 0, 1) !== 0) this.waitWhile(LOCKS + s, (v) => v !== 0, progress);
    }
    for (let m = mask | 0; m !== 0; m &= m - 1) this.waitWhile(WRITES + lowestBit(m), (v) => v > 0, progress);
  }

  unlock(mask: number): void {
    for (let m = mask | 0; m !== 0; m &= m - 1) {
      const s = lowestBit(m);
      Atomics.store(this.flags, LOCKS + s, 0);
      Atomics.notify(this.flags, LOCKS + s);
    }
  }

  private waitWhile(index: number, busy: (v: number) => boolean, progress: () => boolean): void {
    for (;;) {
      const v = Atomics.load(this.flags, index);
      if (!busy(v)) return;
      if (!progress()) Atomics.wait(this.flags, index, v, 1);
    }
  }
}

/** Index of the lowest set bit of a non-zero 32-bit mask. */
function lowestBit(m: number): number {
  return 31 - Math.clz32(m & -m);
}
