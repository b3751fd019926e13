import type { GuestMemory } from '../memory/index.js';
import type { GuestAllocator } from './allocator.js';
import { VirtqueueError } from './errors.js';
import {
  DESC_SIZE,
  ringSizes,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
  type QueueLayout,
  type Segment,
} from './layout.js';
import { RingViews } from './ring-views.js';

export interface DriverQueueOptions {
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /** Enables INDIRECT_DESC: multi-segment chains get a table from this allocator (falls back to direct when full). */
  indirect?: GuestAllocator;
}

export interface UsedBuffer<T> {
  head: number;
  token: T;
  len: number;
}

const TWO32 = 0x1_0000_0000;

/** The driver side of a split virtqueue (kumo-vu, tests): owns the rings' contents and the free descriptors. */
export class DriverQueue<T = unknown> {
  readonly size: number;
  readonly layout: QueueLayout;
  private readonly mem: GuestMemory;
  private rings: RingViews;
  private memGen: number;
  private readonly mask: number;
  private readonly eventIdx: boolean;
  private readonly indirect: GuestAllocator | undefined;
  private readonly freeStack: Uint16Array;
  private freeTop: number;
  /** Per head: the driver's own copy of the chain links (never re-read from shared memory). */
  private readonly shadowNext: Uint16Array;
  private readonly chainLen: Uint16Array;
  /** Per head: its indirect table with the view, kept together when the table goes back to spareTables. */
  private readonly indirectTable: (IndirectTable | undefined)[];
  /**
   * Indirect tables the device returned, by byte size, for the next chain of that size: a request/reply loop then
   * takes no allocator walk and no new view per chain. Given back to the allocator when it runs out or memory changes.
   */
  private readonly spareTables = new Map<number, IndirectTable[]>();
  private readonly busy: Uint8Array;
  /** Per head: total device-writable bytes, to refuse a used length the device could not have written. */
  private readonly writableLen: Float64Array;
  private readonly tokens: (T | undefined)[];
  private availIdx = 0;
  private publishedIdx = 0;
  private kickCheckedIdx = 0;
  private lastUsed = 0;
  private interruptsOn = true;

  constructor(mem: GuestMemory, layout: QueueLayout, opts: DriverQueueOptions = {}) {
    this.rings = new RingViews(mem, layout);
    this.memGen = mem.generation;
    this.mem = mem;
    this.layout = { ...layout };
    this.size = layout.size;
    this.mask = layout.size - 1;
    this.eventIdx = opts.eventIdx ?? false;
    this.indirect = opts.indirect;
    const s = ringSizes(this.size);
    mem.fill(layout.descAddr, s.desc);
    mem.fill(layout.availAddr, s.avail);
    mem.fill(layout.usedAddr, s.used);
    this.freeStack = new Uint16Array(this.size);
    for (let i = 0; i < this.size; i++) this.freeStack[i] = this.size - 1 - i;
    this.freeTop = this.size;
    this.shadowNext = new Uint16Array(this.size);
    this.chainLen = new Uint16Array(this.size);
    this.indirectTable = new Array<IndirectTable | undefined>(this.size);
    this.busy = new Uint8Array(this.size);
    this.writableLen = new Float64Array(this.size);
    this.tokens = new Array<T | undefined>(this.size);
  }

  /** Free descriptors in the direct table. */
  get freeCount(): number {
    return this.freeTop;
  }

  /** Chains added and not yet returned by the device. */
  get inFlight(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) n += this.busy[i];
    return n;
  }

  /**
   * Queues one chain (readable segments, then writable ones); not visible to the device until publish().
   * Returns its head, or null if the ring has no room.
   */
  add(readable: readonly Segment[], writable: readonly Segment[], token: T): number | null {
    const total = readable.length + writable.length;
    if (total === 0) throw new VirtqueueError('a chain needs at least one segment');
    for (const s of readable) this.checkSegment(s);
    let wlen = 0;
    for (const s of writable) {
      this.checkSegment(s);
      wlen += s.len;
    }
    if (this.indirect && total > 1 && this.freeTop > 0) {
      const table = this.takeTable(total * DESC_SIZE);
      if (table !== null) {
        for (let k = 0; k < total; k++) {
          const w = k >= readable.length;
          const s = w ? writable[k - readable.length] : readable[k];
          const last = k === total - 1;
          writeDesc(table.view, k, s.addr, s.len, (w ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : k + 1);
        }
        const head = this.freeStack[--this.freeTop];
        writeDesc(this.r().desc, head, table.addr, total * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
        this.chainLen[head] = 1;
        this.indirectTable[head] = table;
        return this.makeAvailable(head, token, wlen);
      }
    }
    if (this.freeTop < total) return null;
    const top = this.freeTop;
    const head = this.freeStack[top - 1];
    const desc = this.r().desc;
    for (let k = 0; k < total; k++) {
      const d = this.freeStack[top - 1 - k];
      const last = k === total - 1;
      const next = last ? 0 : this.freeStack[top - 2 - k];
      const w = k >= readable.length;
      const s = w ? writable[k - readable.length] : readable[k];
      writeDesc(desc, d, s.addr, s.len, (w ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), next);
      this.shadowNext[d] = next;
    }
    this.freeTop = top - total;
    this.chainLen[head] = total;
    return this.makeAvailable(head, token, wlen);
  }

  /** Makes every added chain visible to the device (one store of avail.idx). */
  publish(): void {
    if (this.publishedIdx === this.availIdx) return;
    Atomics.store(this.r().avail16, 1, this.availIdx);
    this.publishedIdx = this.availIdx;
  }

  /** Whether the device wants a kick for what was published since the last call (avail_event / NO_NOTIFY). */
  kickNeeded(): boolean {
    const nw = this.publishedIdx;
    const old = this.kickCheckedIdx;
    this.kickCheckedIdx = nw;
    if (nw === old) return false;
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.r().used16, this.r().availEventIdx), nw, old);
    return (Atomics.load(this.r().used16, 0) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Collects what the device returned, freeing descriptors (and indirect tables). */
  takeUsed(max = Infinity): UsedBuffer<T>[] {
    const out: UsedBuffer<T>[] = [];
    this.drainUsed((token, len, head) => out.push({ head, token, len }), max);
    return out;
  }

  /** takeUsed() without the array: calls `fn` per returned chain (hot loops); returns how many. */
  drainUsed(fn: (token: T, len: number, head: number) => void, max = Infinity): number {
    const r = this.r();
    const usedIdx = Atomics.load(r.used16, 1);
    const pending = (usedIdx - this.lastUsed) & 0xffff;
    if (pending > this.size) throw new VirtqueueError('used index moved further than the queue size', { usedIdx, lastUsed: this.lastUsed });
    let n = 0;
    while (this.lastUsed !== usedIdx && n < max) {
      const i = this.lastUsed & this.mask;
      const id = r.used32[1 + 2 * i];
      const len = r.used32[2 + 2 * i];
      if (id >= this.size || this.busy[id] === 0) throw new VirtqueueError('device returned an id that is not in flight', { id });
      if (len > this.writableLen[id]) throw new VirtqueueError('device reported more bytes written than the chain can hold', { id, len, writable: this.writableLen[id] });
      const token = this.tokens[id] as T;
      this.release(id);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      n++;
      fn(token, len, id);
    }
    if (this.eventIdx && this.interruptsOn) Atomics.store(r.avail16, r.usedEventIdx, this.lastUsed);
    return n;
  }

  /** Asks the device not to interrupt (NO_INTERRUPT; with EVENT_IDX used_event stops moving). */
  disableInterrupts(): void {
    this.interruptsOn = false;
    Atomics.store(this.r().avail16, 0, VIRTQ_AVAIL_F_NO_INTERRUPT);
  }

  /** Re-enables interrupts; returns true if used buffers are already waiting (take them now). */
  enableInterrupts(): boolean {
    this.interruptsOn = true;
    Atomics.store(this.r().avail16, 0, 0);
    if (this.eventIdx) Atomics.store(this.r().avail16, this.r().usedEventIdx, this.lastUsed);
    return Atomics.load(this.r().used16, 1) !== this.lastUsed;
  }

  private makeAvailable(head: number, token: T, writableLen: number): number {
    this.busy[head] = 1;
    this.writableLen[head] = writableLen;
    this.tokens[head] = token;
    this.r().avail16[2 + (this.availIdx & this.mask)] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    return head;
  }

  private release(head: number): void {
    let d = head;
    for (let k = 0; k < this.chainLen[head]; k++) {
      this.freeStack[this.freeTop++] = d;
      d = this.shadowNext[d];
    }
    const table = this.indirectTable[head];
    if (table !== undefined) {
      const spares = this.spareTables.get(table.view.byteLength);
      if (spares === undefined) this.spareTables.set(table.view.byteLength, [table]);
      else spares.push(table);
      this.indirectTable[head] = undefined;
    }
    this.busy[head] = 0;
    this.tokens[head] = undefined;
  }

  /** An indirect table of `bytes` bytes: a spare one of that size, else a new one (spares given back first if full). */
  private takeTable(bytes: number): IndirectTable | null {
    const alloc = this.indirect as GuestAllocator;
    const spare = this.spareTables.get(bytes)?.pop();
    if (spare !== undefined) {
      if (spare.gen === this.mem.generation) return spare;
      // A view taken before the memory table changed may no longer point at guest memory: none of them is reused.
      alloc.free(spare.addr);
      this.freeSpareTables();
    }
    let addr = alloc.alloc(bytes, DESC_SIZE);
    if (addr === null && this.spareTables.size > 0) {
      this.freeSpareTables();
      addr = alloc.alloc(bytes, DESC_SIZE);
    }
    if (addr === null) return null;
    const t = this.mem.slice(addr, bytes);
    return { addr, view: new DataView(t.buffer, t.byteOffset, t.byteLength), gen: this.mem.generation };
  }

  /** Gives the spare indirect tables back to the allocator (kept for reuse otherwise, see spareTables). */
  freeSpareTables(): void {
    for (const spares of this.spareTables.values()) for (const t of spares) this.indirect?.free(t.addr);
    this.spareTables.clear();
  }

  private checkSegment(s: Segment): void {
    if (!Number.isSafeInteger(s.len) || s.len < 0 || s.len > 0xffff_ffff || !this.mem.contains(s.addr, s.len)) {
      throw new VirtqueueError('segment is not a valid guest buffer', { addr: s.addr, len: s.len });
    }
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

/** An indirect descriptor table: its guest address, a view of it, and the memory generation the view was taken in. */
interface IndirectTable {
  addr: number;
  view: DataView;
  gen: number;
}

/** Descriptor i of the table viewed by `table` (the ring's own, or an indirect one). */
function writeDesc(table: DataView, i: number, addr: number, len: number, flags: number, next: number): void {
  const at = i * DESC_SIZE;
  table.setUint32(at, addr % TWO32, true);
  table.setUint32(at + 4, Math.floor(addr / TWO32), true);
  table.setUint32(at + 8, len, true);
  table.setUint16(at + 12, flags, true);
  table.setUint16(at + 14, next, true);
}
