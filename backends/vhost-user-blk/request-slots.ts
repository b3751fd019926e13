import { VIRTIO_BLK_S_OK } from '../../protocol/virtio/index.js';
import { IoVecArena } from '../../protocol/sys/uring.js';
import { OP_SHIFT } from './pooled.js';
import { BlkLimits } from './limits.js';

export const KIND_RW = 0;
export const KIND_FLUSH = 1;
export const KIND_DISCARD = 2;
export const KIND_ZERO = 3;
/** A write in writethrough mode: acked only after a later fdatasync completed. */
export const KIND_WT_WRITE = 4;
/** WRITE_ZEROES with UNMAP, its ranges punched: where punching is not supported they are zeroed the plain way. */
export const KIND_ZERO_UNMAP = 5;
export const KIND_NAMES = ['read/write', 'flush', 'discard', 'write-zeroes', 'write', 'write-zeroes'];

export const SLOT_SHIFT = OP_SHIFT; // userData = slot + op * SLOT_SHIFT (+ ZERO_RANGE_OP)
/** Marks an fallocate(ZERO_RANGE) op, the one that falls back to punch + allocate on EOPNOTSUPP. */
export const ZERO_RANGE_OP = 0x4000_0000;
/** userData flag of the fallocate that allocates a range again after a punch (WRITE_ZEROES without ZERO_RANGE). */
export const ALLOC_OP = 0x8000_0000;
/** userData of the batch fdatasync (no slot has this index: queues have at most 32768 entries). */
export const SYNC_UD = 0xffff;
/** Segments a request may gain beyond seg_max from buffers that cross region boundaries (beyond: IOERR). */
const REGION_SPLITS = 16;

/** One queue's per-request state, a typed array per field indexed by slot, its iovecs, and the stack of free slots. */
export class RequestSlots {
  /** Each slot's iovecs (perSlot of them). */
  readonly iov: IoVecArena;
  readonly head: Uint16Array;
  readonly statusGpa: Float64Array;
  readonly usedLen: Uint32Array;
  /** Ops of the request still in flight. */
  readonly ops: Uint16Array;
  readonly status: Uint8Array;
  /** The byte count a READ/WRITE must transfer (less: a short transfer, IOERR). */
  readonly expect: Float64Array;
  readonly kind: Uint8Array;
  /** The run of gate stripes the slot's write is counted in (0: none). */
  readonly gateRun: Uint32Array;
  /** 1 if the request is acked only after a group fdatasync (writethrough writes, zeroes, discards). */
  readonly sync: Uint8Array;
  /** Per READ/WRITE slot: its file offset and iovec count, negative for a write (to run it again, see redo()). */
  readonly offset: Float64Array;
  readonly iovN: Int16Array;
  private readonly stack: Uint16Array;
  private top: number;

  constructor(readonly count: number) {
    const n = count;
    // seg_max data segments, the header and status, and room for buffers split where they run over memory regions
    // lying back to back (DeviceQueue: one segment per region).
    this.iov = new IoVecArena(n, BlkLimits.segMax + 2 + REGION_SPLITS);
    this.head = new Uint16Array(n);
    this.statusGpa = new Float64Array(n);
    this.usedLen = new Uint32Array(n);
    this.ops = new Uint16Array(n);
    this.status = new Uint8Array(n);
    this.expect = new Float64Array(n);
    this.kind = new Uint8Array(n);
    this.gateRun = new Uint32Array(n);
    this.sync = new Uint8Array(n);
    this.offset = new Float64Array(n);
    this.iovN = new Int16Array(n);
    this.stack = new Uint16Array(n);
    for (let i = 0; i < n; i++) this.stack[i] = n - 1 - i;
    this.top = n;
  }

  /** Free slots. */
  get freeCount(): number {
    return this.top;
  }

  /** The slot alloc() takes next (there must be a free one). */
  next(): number {
    return this.stack[this.top - 1];
  }

  alloc(head: number, statusGpa: number, usedLen: number, kind: number, expect: number): number {
    const slot = this.stack[--this.top];
    this.head[slot] = head;
    this.statusGpa[slot] = statusGpa;
    this.usedLen[slot] = usedLen;
    this.ops[slot] = 0;
    this.status[slot] = VIRTIO_BLK_S_OK;
    this.kind[slot] = kind;
    this.expect[slot] = expect;
    this.sync[slot] = kind === KIND_WT_WRITE ? 1 : 0;
    return slot;
  }

  release(slot: number): void {
    this.stack[this.top++] = slot;
  }

  close(): void {
    this.iov.free();
  }
}
