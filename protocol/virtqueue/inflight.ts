/**
 * Inflight I/O tracking for split rings (vhost-user "Inflight I/O tracking", protocol feature INFLIGHT_SHMFD): a
 * buffer the front-end keeps across back-end restarts, in which the device records which chain heads it took from
 * the avail ring and has not returned yet. A restarted back-end resubmits those, in the order they were taken, so a
 * request a killed back-end had in flight is neither lost nor served twice, whatever order completions came in.
 *
 * Per queue: a 16-byte header {u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx} and one
 * 16-byte entry per descriptor {u8 inflight; u8 pad[5]; u16 next; u64 counter}, the region rounded up to 64 bytes.
 */
export const INFLIGHT_VERSION = 1;
const HEADER_SIZE = 16;
const ENTRY_SIZE = 16;
const REGION_ALIGN = 64;

/** Bytes one queue of `queueSize` descriptors takes in the buffer (queues lie back to back). */
export function inflightRegionSize(queueSize: number): number {
  return Math.ceil((HEADER_SIZE + ENTRY_SIZE * queueSize) / REGION_ALIGN) * REGION_ALIGN;
}

/** What a queue start found in the buffer. */
export interface InflightRecovery {
  /**
   * recovered: an earlier back-end's record, now picked up; new: a buffer never used (the front-end's ring base
   * stands); reset: a buffer of another queue size or version, or one that makes no sense against the ring (started
   * afresh, the ring base stands).
   */
  state: 'recovered' | 'new' | 'reset';
  /** Heads taken and never returned by an earlier back-end, resubmitted before anything new. */
  resubmitted: number;
}

// u16 indices of the header fields.
const H_VERSION = 4;
const H_DESC_NUM = 5;
const H_LAST_BATCH = 6;
const H_USED_IDX = 7;
/** Entry h's inflight flag (u8 index), next (u16 index) and counter's low word (u32 index; the high word follows). */
const flagAt = (h: number) => HEADER_SIZE + ENTRY_SIZE * h;
const nextAt = (h: number) => (HEADER_SIZE + ENTRY_SIZE * h + 6) / 2;
const counterAt = (h: number) => (HEADER_SIZE + ENTRY_SIZE * h + 8) / 4;

/** One queue's region of the buffer, kept up to date as chains are taken and returned. */
export class InflightRing {
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  /** Heads pushed used since the last publish (the batch whose flags are cleared once used.idx covers it). */
  private readonly batch: Uint16Array;
  private batchLen = 0;
  private counter = 1;
  private resubmit: number[] = [];
  private resubmitAt = 0;

  constructor(region: Uint8Array, readonly size: number) {
    if (region.byteOffset % 8 !== 0 || region.length < inflightRegionSize(size)) {
      throw new RangeError(`inflight region of ${region.length} bytes at offset ${region.byteOffset} cannot hold ${size} entries`);
    }
    const len = inflightRegionSize(size);
    this.u8 = new Uint8Array(region.buffer, region.byteOffset, len);
    this.u16 = new Uint16Array(region.buffer, region.byteOffset, len / 2);
    this.u32 = new Uint32Array(region.buffer, region.byteOffset, len / 4);
    this.batch = new Uint16Array(size);
  }

  /**
   * Reads what an earlier back-end left, against the ring's used index and avail index: finishes its last used batch
   * (entries already in used.idx but not yet cleared), then queues the heads still in flight for resubmission, oldest
   * first. Returns what it found; once recovered, the device takes new chains from avail index usedIdx + resubmitted.
   */
  recover(usedIdx: number, availIdx: number): InflightRecovery {
    const version = this.u16[H_VERSION];
    if (version !== INFLIGHT_VERSION || this.u16[H_DESC_NUM] !== this.size) return this.fresh(version === 0 ? 'new' : 'reset');
    const lastBatch = (usedIdx - this.u16[H_USED_IDX]) & 0xffff;
    // Rings the driver set up anew (a guest reset with the buffer kept): nothing of them is in it, nothing to resume.
    if (lastBatch > this.size) return this.fresh(this.anyInFlight() ? 'reset' : 'new');
    for (let k = 0, h = this.u16[H_LAST_BATCH]; k < lastBatch && h < this.size; k++) {
      this.u8[flagAt(h)] = 0;
      h = this.u16[nextAt(h)];
    }
    this.u16[H_USED_IDX] = usedIdx;
    const heads: { head: number; counter: number }[] = [];
    for (let h = 0; h < this.size; h++) {
      if (this.u8[flagAt(h)] === 0) continue;
      const w = counterAt(h);
      heads.push({ head: h, counter: this.u32[w] + this.u32[w + 1] * 0x1_0000_0000 });
    }
    // The driver made available at least every chain taken and not yet used; a buffer saying otherwise is not this ring's.
    if (heads.length > ((availIdx - usedIdx) & 0xffff)) return this.fresh('reset');
    heads.sort((a, b) => a.counter - b.counter);
    this.resubmit = heads.map((x) => x.head);
    this.resubmitAt = 0;
    this.counter = heads.length > 0 ? Math.min(heads[heads.length - 1].counter + 1, Number.MAX_SAFE_INTEGER) : 1;
    return { state: 'recovered', resubmitted: heads.length };
  }

  private anyInFlight(): boolean {
    for (let h = 0; h < this.size; h++) if (this.u8[flagAt(h)] !== 0) return true;
    return false;
  }

  /** Starts the region over: nothing in flight. */
  private fresh(state: 'new' | 'reset'): InflightRecovery {
    this.u8.fill(0);
    this.u16[H_VERSION] = INFLIGHT_VERSION;
    this.u16[H_DESC_NUM] = this.size;
    this.resubmit = [];
    this.resubmitAt = 0;
    this.counter = 1;
    this.batchLen = 0;
    return { state, resubmitted: 0 };
  }

  hasResubmit(): boolean {
    return this.resubmitAt < this.resubmit.length;
  }

  /** The next head to resubmit, or -1 once every one was handed out. */
  nextResubmit(): number {
    if (this.resubmitAt >= this.resubmit.length) return -1;
    return this.resubmit[this.resubmitAt++];
  }

  /** A head taken from the avail ring. */
  taken(head: number): void {
    const w = counterAt(head);
    const c = this.counter++;
    this.u32[w] = c >>> 0;
    this.u32[w + 1] = Math.floor(c / 0x1_0000_0000);
    this.u8[flagAt(head)] = 1;
  }

  /** A taken head given back to the avail ring unserved (undoPop). */
  untaken(head: number): void {
    this.u8[flagAt(head)] = 0;
  }

  /** A head written to the used ring (not yet published). */
  used(head: number): void {
    this.u16[nextAt(head)] = this.u16[H_LAST_BATCH];
    this.u16[H_LAST_BATCH] = head;
    if (this.batchLen < this.batch.length) this.batch[this.batchLen++] = head;
    // More used entries than the ring has descriptors before one publish: only a driver offering heads twice does that.
    else this.u8[flagAt(head)] = 0;
  }

  /** used.idx now says usedIdx: the batch is the driver's. */
  published(usedIdx: number): void {
    for (let i = 0; i < this.batchLen; i++) this.u8[flagAt(this.batch[i])] = 0;
    this.batchLen = 0;
    this.u16[H_USED_IDX] = usedIdx;
  }
}
