import { GuestMemory } from '../../protocol/memory/index.js';
import { DeviceQueue, DriverQueue, GuestAllocator, compactLayout, type Segment } from '../../protocol/virtqueue/index.js';
import {
  encodeBlkHeader, encodeBlkDiscardSegment, VIRTIO_BLK_OUTHDR_SIZE, type BlkDiscardSegment,
} from '../../protocol/virtio/index.js';

/** An in-process virtio-blk driver over DriverQueue, feeding a DeviceQueue on the same memory. */
export class BlkTestDriver {
  readonly mem: GuestMemory;
  readonly driver: DriverQueue<number>;
  readonly device: DeviceQueue;
  readonly alloc: GuestAllocator;

  constructor(queueSize = 128, memSize = 64 << 20, eventIdx = true) {
    this.mem = GuestMemory.anonymous([{ guestAddr: 0, size: memSize }]);
    const layout = compactLayout(0x1000, queueSize);
    const heapBase = Math.ceil(layout.end / 4096) * 4096;
    this.alloc = new GuestAllocator(heapBase, memSize - heapBase);
    this.driver = new DriverQueue<number>(this.mem, layout, { eventIdx });
    this.device = new DeviceQueue(this.mem, layout, { eventIdx, maxChainLength: 130 });
  }

  buf(len: number, align = 512): number {
    return this.alloc.allocOrThrow(len, align);
  }

  header(type: number, sector: number): number {
    const a = this.buf(VIRTIO_BLK_OUTHDR_SIZE, 16);
    this.mem.write(a, encodeBlkHeader({ type, ioprio: 0, sector }));
    return a;
  }

  /** Queues a request: header, then readable data, then writable data, then a status byte. Returns the status address. */
  add(type: number, sector: number, readable: Segment[], writable: Segment[], token: number, statusLen = 1): number {
    const h = this.header(type, sector);
    const status = this.buf(Math.max(statusLen, 1), 1);
    this.mem.writeU8(status + statusLen - 1, 0xff);
    const w = statusLen > 0 ? [...writable, { addr: status, len: statusLen }] : writable;
    const head = this.driver.add([{ addr: h, len: VIRTIO_BLK_OUTHDR_SIZE }, ...readable], w, token);
    if (head === null) throw new Error('queue full');
    return status + statusLen - 1;
  }

  rangesPayload(segs: BlkDiscardSegment[]): Segment {
    const a = this.buf(segs.length * 16, 16);
    segs.forEach((s, i) => this.mem.write(a + i * 16, encodeBlkDiscardSegment(s)));
    return { addr: a, len: segs.length * 16 };
  }

  close(): void {
    this.mem.close();
  }
}
