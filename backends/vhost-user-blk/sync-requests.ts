import { VIRTIO_BLK_S_IOERR } from '../../protocol/virtio/index.js';
import { IORING_FSYNC_DATASYNC } from '../../protocol/sys/uring.js';
import type { Logger } from '../../protocol/log.js';
import { WRITEBACK_FAILED } from './bounce.js';
import type { BlkEngineImage } from './engine-image.js';
import type { PooledHost } from './pooled.js';
import { KIND_FLUSH, SYNC_UD, type RequestSlots } from './request-slots.js';

/** What the queue engine lends its fdatasyncs. */
export interface SyncHost extends Pick<PooledHost, 'ring' | 'fd' | 'ensureSq' | 'started'> {
  readonly img: BlkEngineImage;
  readonly slots: RequestSlots;
  readonly log?: Logger;
  /** Acks the slot's request with the status it holds. */
  finishSlot(slot: number): void;
}

/**
 * A queue's fdatasyncs: FLUSH requests, and the writethrough group commit. Requests whose data is written but not
 * yet synced wait here; one fdatasync covers all of them (those waiting when it started, while it runs).
 */
export class SyncRequests {
  private readonly waiting: Uint16Array;
  private waitingCount = 0;
  private readonly syncing: Uint16Array;
  private syncingCount = 0;
  /** The group fdatasync is in flight. */
  groupInFlight = false;
  /** Group fdatasyncs started. */
  groups = 0;

  constructor(private readonly host: SyncHost) {
    this.waiting = new Uint16Array(host.slots.count);
    this.syncing = new Uint16Array(host.slots.count);
  }

  /** Starts a FLUSH: an fdatasync of its own. */
  flush(head: number, statusGpa: number, usedLen: number): void {
    const h = this.host;
    const slot = h.slots.alloc(head, statusGpa, usedLen, KIND_FLUSH, 0);
    h.slots.ops[slot] = 1;
    h.started(1);
    h.ensureSq(1);
    h.ring.prepFsync(h.fd, slot, IORING_FSYNC_DATASYNC);
  }

  /**
   * Whether an fdatasync (a FLUSH, or the group sync of writethrough writes) failed. A buffered image's pages whose
   * write-back failed are marked clean and the error is reported once, so a later sync has nothing to write and
   * succeeds, for data that never reached the disk: one failure fails every later sync of every queue, as QEMU's
   * file driver stops trusting its page cache. O_DIRECT writes leave nothing behind in the page cache: each sync
   * counts alone there.
   */
  failed(res: number): boolean {
    const img = this.host.img;
    if ((img.alignment ?? 0) > 0) return res < 0;
    if (res < 0 && Atomics.compareExchange(img.flags, WRITEBACK_FAILED, 0, 1) === 0) {
      this.host.log?.error({ err: -res }, 'writing the image back failed: every FLUSH and writethrough write fails from now on (restart the back-end once the storage is fixed)');
    }
    return Atomics.load(img.flags, WRITEBACK_FAILED) !== 0;
  }

  /** Requests waiting for the next group sync. */
  get waits(): number {
    return this.waitingCount;
  }

  /** Requests wait and no group sync is running: one is due. */
  get groupDue(): boolean {
    return this.waitingCount > 0 && !this.groupInFlight;
  }

  /** A request to ack after the next group sync. */
  add(slot: number): void {
    this.waiting[this.waitingCount++] = slot;
  }

  /** Starts the group fdatasync (userData SYNC_UD) for every request waiting now; only when due. */
  startGroup(): void {
    const h = this.host;
    const n = this.waitingCount;
    this.syncing.set(this.waiting.subarray(0, n));
    this.syncingCount = n;
    this.waitingCount = 0;
    this.groupInFlight = true;
    this.groups++;
    h.started(1);
    h.ensureSq(1);
    h.ring.prepFsync(h.fd, SYNC_UD, IORING_FSYNC_DATASYNC);
    h.ring.submit(0);
  }

  /** The group fdatasync completed with `res`: acks the requests it covered. */
  groupDone(res: number): void {
    const h = this.host;
    this.groupInFlight = false;
    const failed = this.failed(res);
    for (let i = 0; i < this.syncingCount; i++) {
      const slot = this.syncing[i];
      if (failed) h.slots.status[slot] = VIRTIO_BLK_S_IOERR;
      h.finishSlot(slot);
    }
    this.syncingCount = 0;
  }
}
