import type { Logger } from '../../protocol/log.js';
import { preadvRaw, pwritevRaw } from '../../protocol/sys/fd.js';
import { syncRaw } from '../../protocol/sys/fs.js';
import type { RangeRequests } from './range-requests.js';
import { KIND_FLUSH, KIND_RW, KIND_WT_WRITE, type RequestSlots } from './request-slots.js';

/**
 * Ops io_uring cancelled without running them (-ECANCELED: io-wq could not start a worker thread, at a pids or
 * RLIMIT_NPROC limit) are run on the queue thread instead. Such an op is no I/O error, and above all no failed
 * write-back, which would fail every later FLUSH.
 */
export class CancelledOps {
  private noted = false;

  constructor(
    private readonly fd: number,
    private readonly slots: RequestSlots,
    private readonly ranges: RangeRequests,
    private readonly log: Logger | undefined,
  ) {}

  /** Says once that operations run on the queue thread. */
  note(): void {
    if (this.noted) return;
    this.noted = true;
    this.log?.warn('io_uring could not start a worker thread (a pids or RLIMIT_NPROC limit?): such operations run on the queue thread');
  }

  /** The cancelled op `ud` of the slot's request, run here; its result. */
  redo(ud: number, slot: number): number {
    const kind = this.slots.kind[slot];
    if (kind === KIND_FLUSH) return this.sync();
    if (kind === KIND_RW || kind === KIND_WT_WRITE) return this.readWrite(slot);
    return this.ranges.redo(ud, slot);
  }

  /** A cancelled fdatasync (a FLUSH's or the group sync), run here; its result. */
  sync(): number {
    this.note();
    return syncRaw(this.fd);
  }

  /** The slot's cancelled READ/WRITE, run here; its result. */
  private readWrite(slot: number): number {
    this.note();
    const n = this.slots.iovN[slot];
    const iov = this.slots.iov.slotAddress(slot);
    return n < 0 ? pwritevRaw(this.fd, iov, -n, this.slots.offset[slot]) : preadvRaw(this.fd, iov, n, this.slots.offset[slot]);
  }
}
