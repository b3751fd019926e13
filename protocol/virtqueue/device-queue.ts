import type { GuestMemory } from '../memory/index.js';
import { DescriptorChain } from './chain.js';
import { ChainError, RingMemoryError, VirtqueueError } from './errors.js';
import {
  DESC_SIZE,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
  type QueueLayout,
  type Segment,
} from './layout.js';
import type { InflightRecovery, InflightRing } from './inflight.js';
import type { RingDirtyLog } from './dirty-log.js';
import { RingViews } from './ring-views.js';

export interface DeviceQueueOptions {
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** Most data descriptors one chain may carry (e.g. blk seg_max + 2); default: no limit beyond the tables. */
  maxChainLength?: number;
  /** Most entries an indirect table may have; default 65536 (a u16 `next` cannot address more). */
  maxIndirectEntries?: number;
}

const TWO32 = 0x1_0000_0000;
const MAX_CHAIN_BYTES = 0xffff_ffff;

/**
 * The device side of a split virtqueue. The guest (or a front-end) writes the avail ring concurrently
 * from another thread/process: indices are read and published with Atomics (seq_cst), and each
 * descriptor field is read once into a local before it is checked and used.
 */
export class DeviceQueue {
  readonly size: number;
  readonly layout: QueueLayout;
  private readonly mem: GuestMemory;
  private rings: RingViews;
  private memGen: number;
  private readonly mask: number;
  /** VIRTIO_F_EVENT_IDX was negotiated: notifications are counted, so signalling per element is cheap. */
  readonly eventIdx: boolean;
  private readonly maxChain: number;
  private readonly maxIndirect: number;
  private lastAvail = 0;
  private usedIdx: number;
  private publishedUsed: number;
  private signalledUsed = 0;
  private signalledValid = false;
  private notifyOff = false;
  private inflight: InflightRing | null = null;
  private dirty: RingDirtyLog | null = null;

  constructor(mem: GuestMemory, layout: QueueLayout, opts: DeviceQueueOptions) {
    this.rings = new RingViews(mem, layout);
    this.memGen = mem.generation;
    this.mem = mem;
    this.layout = { ...layout };
    this.size = layout.size;
    this.mask = layout.size - 1;
    this.eventIdx = opts.eventIdx;
    this.maxChain = opts.maxChainLength ?? Number.MAX_SAFE_INTEGER;
    this.maxIndirect = Math.min(opts.maxIndirectEntries ?? 65536, 65536);
    // The used index in memory is authoritative (0 after a reset, preserved across a backend reconnect).
    this.usedIdx = Atomics.load(this.rings.used16, 1);
    this.publishedUsed = this.usedIdx;
  }

  /** Next avail ring index the device will read (vhost-user GET/SET_VRING_BASE). */
  get nextAvailIdx(): number {
    return this.lastAvail;
  }
  set nextAvailIdx(v: number) {
    this.lastAvail = v & 0xffff;
  }

  /** Next used ring index the device will write. */
  get nextUsedIdx(): number {
    return this.usedIdx;
  }
  set nextUsedIdx(v: number) {
    this.usedIdx = v & 0xffff;
    this.publishedUsed = this.usedIdx;
    this.signalledValid = false;
  }

  /**
   * Records taken and returned heads in `ring` (vhost-user inflight tracking) from now on. With `recover`, first picks
   * up what an earlier back-end left there: its unreturned heads are popped again before anything new, and the avail
   * index moves past every chain it took. Without, the ring carries on from this queue's predecessor (a new memory
   * table).
   */
  trackInflight(ring: InflightRing, recover: boolean): InflightRecovery | null {
    if (ring.size !== this.size) throw new VirtqueueError('inflight region is for another queue size', { size: this.size, inflight: ring.size });
    this.inflight = ring;
    if (!recover) return null;
    const found = ring.recover(this.usedIdx, this.availIdx());
    if (found.state === 'recovered') this.lastAvail = (this.usedIdx + found.resubmitted) & 0xffff;
    return found;
  }

  /** Dirty logging (vhost-user migration): what the device writes into guest memory is marked in `d`'s log. */
  trackDirty(d: RingDirtyLog | null): void {
    this.dirty = d;
  }

  /** True if the driver has made chains available that pop() has not taken yet. */
  hasAvailable(): boolean {
    return this.availIdx() !== this.lastAvail || this.inflight?.hasResubmit() === true;
  }

  /**
   * Takes the next available chain, or null. Throws VirtqueueError if the avail index is corrupt
   * (the queue is broken), ChainError for one malformed chain (already consumed; give it back with
   * returnMalformed(e)).
   */
  pop(): DescriptorChain | null {
    if (this.inflight?.hasResubmit() === true) {
      // Rings unmapped for now (REM_MEM_REG) throw here, before the head is handed out: it is resubmitted later.
      this.r();
      return this.take(this.inflight.nextResubmit());
    }
    const availIdx = this.availIdx();
    const last = this.lastAvail;
    if (availIdx === last) return null;
    const pending = (availIdx - last) & 0xffff;
    if (pending > this.size) {
      throw new VirtqueueError('avail index moved further than the queue size', { availIdx, lastAvail: last, size: this.size });
    }
    const head = this.r().avail16[2 + (last & this.mask)];
    this.lastAvail = (last + 1) & 0xffff;
    if (this.eventIdx && !this.notifyOff) {
      // seq_cst store: it must be visible before the next load of avail.idx, or a kick could be lost.
      Atomics.store(this.r().used16, this.r().availEventIdx, this.lastAvail);
      this.dirty?.usedRing(2 * this.r().availEventIdx, 2);
    }
    if (head >= this.size) throw new ChainError('descriptor head index out of range', head, { size: this.size });
    this.inflight?.taken(head);
    return this.take(head);
  }

  private take(head: number): DescriptorChain {
    const d = this.dirty;
    if (d === null) return this.parseChain(head);
    try {
      const chain = this.parseChain(head);
      d.taken(head, chain.writable);
      return chain;
    } catch (e) {
      if (e instanceof ChainError && e.reach !== null) d.takenMalformed(head, e.reach);
      throw e;
    }
  }

  /**
   * Gives back the last `count` popped chains (they will be popped again), e.g. a net RX path that
   * took buffers and then found no packet. Only chains not yet passed to pushUsed may be returned.
   */
  undoPop(count = 1): void {
    if (!Number.isInteger(count) || count < 0 || count > this.size) throw new VirtqueueError('invalid undoPop count', { count });
    if (this.inflight !== null) {
      for (let k = 1; k <= count; k++) {
        const head = this.r().avail16[2 + ((this.lastAvail - k) & this.mask)];
        if (head < this.size) this.inflight.untaken(head);
      }
    }
    this.lastAvail = (this.lastAvail - count) & 0xffff;
    if (this.eventIdx && !this.notifyOff) this.storeAvailEvent();
  }

  private storeAvailEvent(): void {
    Atomics.store(this.r().used16, this.r().availEventIdx, this.lastAvail);
    this.dirty?.usedRing(2 * this.r().availEventIdx, 2);
  }

  private storeUsedFlags(flags: number): void {
    Atomics.store(this.r().used16, 0, flags);
    this.dirty?.usedRing(0, 2);
  }

  /**
   * Gives back a chain pop() refused (ChainError) with nothing written. A head that is no descriptor index at all
   * names nothing that could go back: false, and the avail entry is just skipped.
   */
  returnMalformed(e: ChainError): boolean {
    if (!Number.isInteger(e.head) || e.head < 0 || e.head >= this.size) return false;
    this.pushUsed(e.head, 0);
    return true;
  }

  /** Whether the rings are in mapped memory now (a front-end may remove their region for a while: REM_MEM_REG). */
  ringsMapped(): boolean {
    try {
      this.r();
      return true;
    } catch (e) {
      if (e instanceof RingMemoryError) return false;
      throw e;
    }
  }

  /** Writes a used element (not yet visible to the driver: see publishUsed). */
  pushUsed(head: number, writtenLen: number): void {
    if (!Number.isInteger(head) || head < 0 || head >= this.size || !Number.isInteger(writtenLen) || writtenLen < 0 || writtenLen > MAX_CHAIN_BYTES) {
      throw new VirtqueueError('invalid used element', { head, writtenLen });
    }
    const i = this.usedIdx & this.mask;
    const u32 = this.r().used32;
    u32[1 + 2 * i] = head;
    u32[2 + 2 * i] = writtenLen;
    this.dirty?.used(head, writtenLen, i);
    this.inflight?.used(head);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /** Makes every pushed element visible with one store of used.idx (after the element writes). */
  publishUsed(): void {
    if (this.publishedUsed === this.usedIdx) return;
    Atomics.store(this.r().used16, 1, this.usedIdx);
    this.dirty?.usedRing(2, 2);
    this.publishedUsed = this.usedIdx;
    this.inflight?.published(this.usedIdx);
  }

  /**
   * Whether the driver wants an interrupt for what was published since the last call
   * (used_event with EVENT_IDX, else the NO_INTERRUPT flag). Call after publishUsed().
   */
  needsNotification(): boolean {
    const nw = this.publishedUsed;
    const old = this.signalledUsed;
    const valid = this.signalledValid;
    if (valid && nw === old) return false;
    this.signalledUsed = nw;
    this.signalledValid = true;
    if (this.eventIdx) {
      if (!valid) return true;
      return vringNeedEvent(Atomics.load(this.r().avail16, this.r().usedEventIdx), nw, old);
    }
    return (Atomics.load(this.r().avail16, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Asks the driver not to kick (used.flags NO_NOTIFY; with EVENT_IDX avail_event stops moving). */
  disableNotifications(): void {
    this.notifyOff = true;
    if (!this.eventIdx) this.storeUsedFlags(Atomics.load(this.r().used16, 0) | VIRTQ_USED_F_NO_NOTIFY);
  }

  /** Re-enables kicks; returns true if more chains arrived meanwhile (the caller must then pop again). */
  enableNotifications(): boolean {
    this.notifyOff = false;
    if (this.eventIdx) this.storeAvailEvent();
    else this.storeUsedFlags(Atomics.load(this.r().used16, 0) & ~VIRTQ_USED_F_NO_NOTIFY);
    return this.availIdx() !== this.lastAvail;
  }

  private availIdx(): number {
    return Atomics.load(this.r().avail16, 1);
  }

  /**
   * Adds a descriptor's buffer to `list`: one segment, or one per region where it runs over regions that lie back to
   * back (front-ends that give each NUMA node, memory zone or DIMM a region of its own). False if any byte of it is
   * in no region.
   */
  private pushBuffer(list: Segment[], addr: number, len: number): boolean {
    if (this.mem.contains(addr, len)) {
      list.push({ addr, len });
      return true;
    }
    const start = list.length;
    for (let a = addr, left = len; left > 0;) {
      const end = this.mem.regionEnd(a);
      if (end < 0) {
        list.length = start;
        return false;
      }
      const n = Math.min(left, end - a);
      list.push({ addr: a, len: n });
      a += n;
      left -= n;
    }
    return true;
  }

  private parseChain(head: number): DescriptorChain {
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let rl = 0;
    let wl = 0;
    let count = 0;
    let table = this.r().desc;
    // Where the table starts in `table` (an indirect one is read in place, through its region's own view).
    let base = 0;
    let tableSize = this.size;
    let indirect = false;
    let sawWritable = false;
    let idx = head;
    let steps = 0;
    // A buffer outside guest memory: the walk goes on (the chain's shape may still be bad too), then fails with reach.
    let outside: { index: number; hi: number; lo: number; len: number } | null = null;
    // -2: none seen yet (-1 is a descriptor beyond 2^53, see addr below).
    let firstR = -2;
    let firstRLen = 0;
    let firstW = -2;
    let firstWLen = 0;
    let lastW = -2;
    let lastWLen = 0;
    for (;;) {
      // Each table entry can be visited at most once in a well-formed chain: more steps means a loop.
      if (steps >= tableSize) throw new ChainError('descriptor chain is longer than its table (loop?)', head, { indirect, tableSize });
      steps++;
      const o = base + idx * DESC_SIZE;
      const lo = table.getUint32(o, true);
      const hi = table.getUint32(o + 4, true);
      const len = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      const next = table.getUint16(o + 14, true);
      // Beyond 2^53: no guest memory is there (-1 then stands for it; an indirect table there is refused below).
      const addr = hi >= 0x20_0000 ? -1 : hi * TWO32 + lo;

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) throw new ChainError('indirect descriptor inside an indirect table', head, { index: idx });
        if (flags & VIRTQ_DESC_F_NEXT) throw new ChainError('indirect descriptor with NEXT set', head, { index: idx });
        if (len === 0 || len % DESC_SIZE !== 0) throw new ChainError('indirect table length is not a non-zero multiple of 16', head, { len });
        const entries = len / DESC_SIZE;
        if (entries > this.maxIndirect) throw new ChainError('indirect table has too many entries', head, { entries, max: this.maxIndirect });
        if (addr < 0 || !this.mem.contains(addr, len)) throw new ChainError('indirect table is outside guest memory', head, { hi, lo, len });
        const dv = this.mem.dataView(addr, len);
        // Not seen: a table is at most 1 MiB (maxIndirect) and view chunks overlap by more.
        if (dv === null) throw new ChainError('indirect table crosses a view chunk', head, { hi, lo, len });
        table = dv;
        base = this.mem.viewOffset;
        tableSize = entries;
        indirect = true;
        idx = 0;
        steps = 0;
        continue;
      }

      if (flags & VIRTQ_DESC_F_WRITE) {
        sawWritable = true;
        if (len > 0) {
          if (addr < 0 || !this.pushBuffer(writable, addr, len)) outside ??= { index: idx, hi, lo, len };
          wl += len;
          if (firstW === -2) {
            firstW = addr;
            firstWLen = len;
          }
          lastW = addr;
          lastWLen = len;
        }
      } else {
        if (sawWritable) throw new ChainError('device-readable descriptor after a device-writable one', head, { index: idx });
        if (len > 0) {
          if (addr < 0 || !this.pushBuffer(readable, addr, len)) outside ??= { index: idx, hi, lo, len };
          rl += len;
          if (firstR === -2) {
            firstR = addr;
            firstRLen = len;
          }
        }
      }
      if (rl + wl > MAX_CHAIN_BYTES) throw new ChainError('descriptor chain is longer than 2^32-1 bytes', head, { readable: rl, writable: wl });
      if (++count > this.maxChain) throw new ChainError('descriptor chain has too many descriptors', head, { max: this.maxChain });

      if ((flags & VIRTQ_DESC_F_NEXT) === 0) break;
      if (next >= tableSize) throw new ChainError('descriptor next index out of range', head, { index: idx, next, tableSize, indirect });
      idx = next;
    }
    if (outside !== null) {
      const seg = (addr: number, len: number) => (addr >= 0 && this.mem.contains(addr, len) ? { addr, len } : null);
      const reach = { firstReadable: seg(firstR, firstRLen), firstWritable: seg(firstW, firstWLen), lastWritable: seg(lastW, lastWLen) };
      throw new ChainError('descriptor buffer is outside guest memory', head, outside, reach);
    }
    return new DescriptorChain(head, readable, writable, rl, wl);
  }

  /** The ring views, re-taken if the memory table changed (a removed ring region throws instead of crashing). */
  private r(): RingViews {
    if (this.mem.generation !== this.memGen) {
      this.rings = new RingViews(this.mem, this.layout);
      this.memGen = this.mem.generation;
    }
    return this.rings;
  }
}
