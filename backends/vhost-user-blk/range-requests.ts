import { readFromChain, type DescriptorChain } from '../../protocol/virtqueue/index.js';
import {
  VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_DISCARD_SEG_SIZE,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../../protocol/virtio/index.js';
import {
  IOSQE_IO_LINK, ECANCELED, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
} from '../../protocol/sys/uring.js';
import type { Logger } from '../../protocol/log.js';
import { pwritevRaw } from '../../protocol/sys/fd.js';
import { blkDiscard, fallocateRaw } from '../../protocol/sys/fs.js';
import { mapAnonymous, type Mapping } from '../../protocol/sys/mem.js';
import { DirectZeroes, WriteGate } from './bounce.js';
import type { BlkEngineImage } from './engine-image.js';
import type { PooledHost } from './pooled.js';
import { BlkLimits } from './limits.js';
import {
  type RequestSlots, KIND_DISCARD, KIND_ZERO, KIND_ZERO_UNMAP, SLOT_SHIFT, ZERO_RANGE_OP, ALLOC_OP,
} from './request-slots.js';
import { SECTOR, rangeOk, sectorOffset } from './request-header.js';

const EOPNOTSUPP = 95;
const EIO = 5;

/** What the queue engine lends its DISCARD and WRITE_ZEROES requests. */
export interface RangeHost extends Omit<PooledHost, 'end'> {
  readonly img: BlkEngineImage;
  readonly slots: RequestSlots;
  readonly log?: Logger;
  /** Completes a request that needs no I/O. */
  finishNow(head: number, statusGpa: number, status: number, usedLen: number): void;
  /** A request whose operations all completed. */
  settle(slot: number): void;
}

/**
 * DISCARD and WRITE_ZEROES: one fallocate per range (BLKDISCARD on a block device that refuses a punch), cut to
 * whole logical blocks, with fallbacks where the file system or device refuses a mode.
 */
export class RangeRequests {
  private readonly img: BlkEngineImage;
  private readonly slots: RequestSlots;
  /** Ranges per slot: [offset, len] × maxSeg (for the zero-range fallback). */
  private readonly ranges: Float64Array;
  private zeroRangeSupported = true;
  /** Whether punching a hole zeroes a range here (a block device needs write-zeroes with unmap for it). */
  private punchSupported = true;
  /** A block device refused a punch for DISCARD: discards go as BLKDISCARD from then on (see BlkEngineImage.blockDevice). */
  private discardIoctl = false;
  /** O_DIRECT: WRITE_ZEROES over part of a block. */
  private readonly zeroPart: DirectZeroes | null;
  /** Zeroes for partial blocks of WRITE_ZEROES on a buffered block device (see wholeBlocks). */
  private zeroes: Mapping | null = null;
  private readonly segBuf = new Uint8Array(VIRTIO_BLK_DISCARD_SEG_SIZE);
  private readonly segView = new DataView(this.segBuf.buffer);

  constructor(private readonly host: RangeHost) {
    this.img = host.img;
    this.slots = host.slots;
    this.ranges = new Float64Array(host.slots.count * BlkLimits.maxDiscardSeg * 2);
    const align = host.img.alignment ?? 0;
    this.zeroPart = align > 0 ? new DirectZeroes(host.fd, align, host.img.size) : null;
  }

  free(): void {
    this.zeroPart?.free();
    this.zeroes?.unmap();
  }

  /** Starts a DISCARD or WRITE_ZEROES request (a slot must be free). */
  start(chain: DescriptorChain, statusGpa: number, discard: boolean): void {
    const h = this.host;
    const s = this.slots;
    const head = chain.head;
    const used = chain.writableLength;
    const payload = chain.readableLength - VIRTIO_BLK_OUTHDR_SIZE;
    const count = payload / VIRTIO_BLK_DISCARD_SEG_SIZE;
    const max = discard ? BlkLimits.maxDiscardSeg : BlkLimits.maxWriteZeroesSeg;
    if (this.img.readonly || count < 1 || !Number.isInteger(count) || count > max) {
      return h.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
    }
    const mem = h.mem();
    const base = s.next() * BlkLimits.maxDiscardSeg * 2; // the slot alloc() will take
    let unmap = false;
    // Unknown flags in any segment make the request UNSUPP (virtio 1.2 §5.2.6), whatever the other segments hold.
    let outOfRange = false;
    for (let i = 0; i < count; i++) {
      readFromChain(mem, chain.readable, VIRTIO_BLK_OUTHDR_SIZE + i * VIRTIO_BLK_DISCARD_SEG_SIZE, this.segBuf);
      const lo = this.segView.getUint32(0, true);
      const hi = this.segView.getUint32(4, true);
      const num = this.segView.getUint32(8, true);
      const flags = this.segView.getUint32(12, true);
      // DISCARD has no flags; WRITE_ZEROES knows only UNMAP.
      if ((discard && flags !== 0) || (!discard && (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0)) {
        return h.finishNow(head, statusGpa, VIRTIO_BLK_S_UNSUPP, used);
      }
      const max = discard ? BlkLimits.maxDiscardSectors : BlkLimits.maxWriteZeroesSectors;
      const off = sectorOffset(lo, hi);
      if (num > max || !rangeOk(off, num * SECTOR, this.img.size)) {
        outOfRange = true;
        continue;
      }
      this.ranges[base + 2 * i] = off;
      this.ranges[base + 2 * i + 1] = num * SECTOR;
      if (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) unmap = true;
    }
    if (outOfRange) return h.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
    unmap &&= this.punchSupported;
    const kind = discard ? KIND_DISCARD : unmap ? KIND_ZERO_UNMAP : KIND_ZERO;
    const slot = s.alloc(head, statusGpa, used, kind, 0);
    // Writethrough: like writes, acked once an fdatasync after them completed.
    if (Atomics.load(this.img.flags, 0) !== 0) s.sync[slot] = 1;
    const block = this.img.logicalBlock ?? SECTOR;
    if (block > SECTOR) this.wholeBlocks(slot, base, count, block, discard);
    if (h.gate !== null) {
      // One run of stripes over all the ranges (more than they need when they lie apart: fine for a rare request).
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = 0; i < count; i++) {
        const off = this.ranges[base + 2 * i];
        const len = this.ranges[base + 2 * i + 1];
        if (len === 0) continue;
        lo = Math.min(lo, off);
        hi = Math.max(hi, off + len);
      }
      if (hi > lo) {
        const run = WriteGate.stripes(lo, hi - lo);
        h.gate.enter(run, h.progress);
        s.gateRun[slot] = run;
      }
    }
    const fd = h.fd;
    for (let i = 0; i < count; i++) {
      const off = this.ranges[base + 2 * i];
      const len = this.ranges[base + 2 * i + 1];
      if (len === 0) continue;
      if (discard && this.discardIoctl) {
        this.discardRange(slot, i);
        continue;
      }
      const mode = discard || unmap || !this.zeroRangeSupported
        ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
      s.ops[slot]++;
      h.started(1);
      const zeroRange = (mode & FALLOC_FL_ZERO_RANGE) !== 0;
      const ud = slot + i * SLOT_SHIFT + (zeroRange ? ZERO_RANGE_OP : 0);
      h.ensureSq(2);
      if (!discard && !unmap && !this.zeroRangeSupported) {
        // Punch (reads as zeroes) and allocate again: zeroed, still allocated.
        s.ops[slot]++;
        h.started(1);
        h.ring.prepFallocate(fd, mode, off, len, ud, IOSQE_IO_LINK);
        h.ring.prepFallocate(fd, FALLOC_FL_KEEP_SIZE, off, len, ud + ALLOC_OP);
      } else {
        h.ring.prepFallocate(fd, mode, off, len, ud);
      }
    }
    if (s.ops[slot] === 0) h.settle(slot);
  }

  /**
   * An op of the slot's request failed with `res`: true where a fallback took it (or a refusal that is no failure),
   * false for an I/O error (the caller fails the request).
   */
  refused(ud: number, slot: number, res: number): boolean {
    const kind = this.slots.kind[slot];
    if (kind === KIND_DISCARD && res === -EOPNOTSUPP) {
      // Discard is a hint: a file system that cannot punch holes still completes it. A block device without
      // write-zeroes may still discard: it gets BLKDISCARD.
      if (this.img.blockDevice === true) {
        this.discardIoctl = true;
        this.discardRange(slot, (ud >>> 16) & 0x3fff);
      }
    } else if ((ud & ALLOC_OP) !== 0 && (res === -EOPNOTSUPP || res === -ECANCELED)) {
      // Allocating again after the punch: the range reads as zeroes already, and a file system with no plain
      // fallocate (ext2, ext4 without extents) leaves it a hole. Cancelled: the punch failed, and said so.
    } else if (kind === KIND_ZERO_UNMAP && res === -EOPNOTSUPP && (ud & ZERO_RANGE_OP) === 0 && this.zeroRangeSupported) {
      // UNMAP only allows deallocating: the range must read as zeroes all the same (a block device without
      // write-zeroes-with-unmap refuses the punch, and takes ZERO_RANGE, which writes zeroes if it must).
      this.punchSupported = false;
      this.zeroRange(slot, (ud >>> 16) & 0x3fff);
    } else if ((kind === KIND_ZERO || kind === KIND_ZERO_UNMAP) && res === -EOPNOTSUPP && (ud & ZERO_RANGE_OP) === 0) {
      // No way to zero a range here (no fallocate at all): UNSUPP, so the guest writes zeroes itself (Linux does).
      if (this.slots.status[slot] === VIRTIO_BLK_S_OK) this.slots.status[slot] = VIRTIO_BLK_S_UNSUPP;
    } else if ((ud & ZERO_RANGE_OP) !== 0 && res === -EOPNOTSUPP) {
      this.zeroRangeSupported = false;
      this.retryZero(slot, ((ud & ~ZERO_RANGE_OP) >>> 16) & 0x3fff);
    } else {
      return false;
    }
    return true;
  }

  /** An op of the slot's request that io_uring cancelled, run here (see CancelledOps); its result. */
  redo(ud: number, slot: number): number {
    // The allocation linked after a punch is cancelled when the punch failed too: redone only after a punch that did not.
    if ((ud & ALLOC_OP) !== 0 && this.slots.status[slot] !== VIRTIO_BLK_S_OK) return -ECANCELED;
    this.host.cancelled();
    const i = ((ud & ~(ZERO_RANGE_OP | ALLOC_OP)) >>> 16) & 0x3fff;
    const mode = (ud & ALLOC_OP) !== 0 ? FALLOC_FL_KEEP_SIZE
      : (ud & ZERO_RANGE_OP) !== 0 ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
        : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    return fallocateRaw(this.host.fd, mode, this.ranges[base + 2 * i], this.ranges[base + 2 * i + 1]);
  }

  /**
   * A block device takes fallocate on whole logical blocks only: each range is cut to the blocks it covers.
   * WRITE_ZEROES writes zeroes over the partial blocks at either end; DISCARD, a hint, leaves them alone.
   */
  private wholeBlocks(slot: number, base: number, count: number, block: number, discard: boolean): void {
    for (let i = 0; i < count; i++) {
      const off = this.ranges[base + 2 * i];
      const end = off + this.ranges[base + 2 * i + 1];
      const lo = Math.ceil(off / block) * block;
      const hi = Math.floor(end / block) * block;
      if (!discard && end > off) {
        const headEnd = Math.min(lo, end);
        const tail = Math.max(hi, headEnd);
        if ((headEnd > off && this.writeZeroes(slot, off, headEnd - off) < 0) || (end > tail && this.writeZeroes(slot, tail, end - tail) < 0)) {
          this.slots.status[slot] = VIRTIO_BLK_S_IOERR;
        }
      }
      this.ranges[base + 2 * i] = lo;
      this.ranges[base + 2 * i + 1] = Math.max(0, hi - lo);
    }
  }

  /** Zeroes part of one block, now, in this thread; returns len or -errno. */
  private writeZeroes(slot: number, offset: number, len: number): number {
    // O_DIRECT: read the block, zero the part, write it back, ordered against other writes like any patch.
    if (this.zeroPart !== null) return this.zeroPartGated(this.zeroPart, offset, len);
    // Buffered: the kernel patches the block in its page cache.
    this.zeroes ??= mapAnonymous(this.img.logicalBlock ?? SECTOR);
    const iov = this.slots.iov;
    iov.set(slot, 0, Number(this.zeroes.ptr), len);
    const n = pwritevRaw(this.host.fd, iov.slotAddress(slot), 1, offset);
    return n === len ? len : n < 0 ? n : -EIO;
  }

  /** Zeroes part of a block of an O_DIRECT image in this thread, holding its gate stripes' locks; len or -errno. */
  private zeroPartGated(z: DirectZeroes, offset: number, len: number): number {
    const gate = this.host.gate;
    if (gate === null) return z.zero(offset, len);
    const run = WriteGate.stripesFor(offset, len, true, z.alignment, this.img.size);
    gate.lock(run, this.host.progress);
    try {
      return z.zero(offset, len);
    } finally {
      gate.unlock(run);
    }
  }

  /**
   * BLKDISCARD of range i of the slot's DISCARD, in this thread (io_uring has no discard before Linux 6.12's
   * URING_CMD); its failure is ignored, a discard being a hint.
   */
  private discardRange(slot: number, i: number): void {
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    const r = blkDiscard(this.host.fd, this.ranges[base + 2 * i], this.ranges[base + 2 * i + 1]);
    if (r < 0) this.host.log?.debug({ errno: -r }, 'BLKDISCARD failed');
  }

  /** fallocate(ZERO_RANGE) of range i of the slot's request, in place of a punch that was refused. */
  private zeroRange(slot: number, i: number): void {
    const h = this.host;
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    this.slots.ops[slot]++;
    h.started(1);
    h.ensureSq(1);
    const mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    h.ring.prepFallocate(h.fd, mode, this.ranges[base + 2 * i], this.ranges[base + 2 * i + 1], slot + i * SLOT_SHIFT + ZERO_RANGE_OP);
  }

  private retryZero(slot: number, i: number): void {
    const h = this.host;
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    const off = this.ranges[base + 2 * i];
    const len = this.ranges[base + 2 * i + 1];
    const fd = h.fd;
    const ud = slot + i * SLOT_SHIFT;
    this.slots.ops[slot] += 2;
    h.started(2);
    h.ensureSq(2);
    h.ring.prepFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len, ud, IOSQE_IO_LINK);
    h.ring.prepFallocate(fd, FALLOC_FL_KEEP_SIZE, off, len, ud + ALLOC_OP);
  }
}
