import { encodeBlkHeader, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../../protocol/virtio/index.js';
import type { Segment } from '../../../protocol/virtqueue/index.js';
import type { VuDevice, VuQueue } from '../device.js';
import { KumoVuError } from '../errors.js';


/** One-request-at-a-time virtio-blk client (verify, tools): header, data segments, status byte. */
export class BlkClient {
  private readonly hdrAddr: number[];
  private readonly statusAddr: number[];
  private readonly hdr = new Uint8Array(VIRTIO_BLK_OUTHDR_SIZE);

  constructor(
    private readonly dev: VuDevice,
    private readonly timeoutMs = 10_000,
  ) {
    this.hdrAddr = dev.queues.map(() => dev.buffer(VIRTIO_BLK_OUTHDR_SIZE, 16));
    this.statusAddr = dev.queues.map(() => dev.buffer(1, 1));
  }

  /**
   * Runs one request on queue q and returns its status byte. `data` segments are device-readable for
   * writes (OUT) and device-writable for everything else.
   */
  run(q: VuQueue, type: number, sector: number, data: Segment[]): { status: number; written: number } {
    const mem = this.dev.mem;
    if (mem === null) throw new KumoVuError('device not started');
    const h = this.hdrAddr[q.index];
    const st = this.statusAddr[q.index];
    mem.write(h, encodeBlkHeader({ type, ioprio: 0, sector }, this.hdr));
    mem.writeU8(st, 0xff);
    const readable: Segment[] = [{ addr: h, len: VIRTIO_BLK_OUTHDR_SIZE }];
    const writable: Segment[] = [];
    if (type === VIRTIO_BLK_T_OUT) readable.push(...data);
    else writable.push(...data);
    writable.push({ addr: st, len: 1 });
    const head = q.dq.add(readable, writable, 0);
    if (head === null) throw new KumoVuError('queue is full', { queue: q.index });
    q.kick();
    const used = this.dev.waitUsed(q, this.timeoutMs);
    if (used.length !== 1 || used[0].head !== head) {
      throw new KumoVuError('device completed an unexpected request', { queue: q.index, heads: used.map((u) => u.head), head });
    }
    const status = mem.readU8(st);
    return { status, written: used[0].len };
  }

  /** Where queue q's requests get their status byte. */
  statusOf(q: VuQueue): number {
    return this.statusAddr[q.index];
  }

  read(q: VuQueue, sector: number, data: Segment[]): number {
    return this.run(q, VIRTIO_BLK_T_IN, sector, data).status;
  }

  write(q: VuQueue, sector: number, data: Segment[]): number {
    return this.run(q, VIRTIO_BLK_T_OUT, sector, data).status;
  }
}
