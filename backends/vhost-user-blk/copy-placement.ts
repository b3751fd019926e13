import { availableParallelism } from 'node:os';
import { SetupError } from '../../protocol/errors.js';
import { IoUring, ringRefusal } from '../../protocol/sys/uring.js';
import { CopySpread } from '../../protocol/sys/copy-spread.js';
import type { BlkEngineImage } from './engine-image.js';

/** Reads at least this large may go to io-wq threads (see CopyPlacement.offloadRead). */
export const OFFLOAD_MIN_BYTES = 64 * 1024;
const CPUS = availableParallelism();

/** A queue's io_uring, with room for `queueSize` requests. */
export function queueRing(queueSize: number): IoUring {
  // At least 8: one request may need two SQEs at once (a punch linked to an allocation, a block's head and tail).
  let entries = 8;
  while (entries < queueSize) entries <<= 1;
  let ring: IoUring;
  try {
    ring = new IoUring(entries, { cqEntries: entries * 4, coopTaskrun: true });
  } catch (e) {
    const why = ringRefusal(e);
    throw why === null ? e : new SetupError(`requests are served through io_uring: ${why}`);
  }
  // One io-wq worker per CPU. io-wq is here to copy cached data on a second CPU (reads that would wait for
  // the device take io_uring's async buffered-read path, O_DIRECT goes to the block layer); the kernel's own
  // cap (4 per CPU) only let more copiers contend: cached 128k ext4 reads on one queue ran at 109-120k IOPS
  // with it and 126-145k with this. A forced-async read of cold data does wait in a worker, so on a slow
  // device fewer of those overlap. Kernels before 5.15 lack the knob: they keep their own cap.
  try {
    ring.setMaxWorkers(CPUS, CPUS);
  } catch {
    /* no IORING_REGISTER_IOWQ_MAX_WORKERS */
  }
  return ring;
}

/**
 * Where a queue's data copies run: in this thread (preadv/pwritev), inline in io_uring_enter, or on an io-wq
 * worker, from how many queues all workers serve (flags[1]) against the CPUs there are.
 */
export class CopyPlacement {
  private readonly spread = new CopySpread();
  private attached = false;

  constructor(private readonly img: BlkEngineImage) {}

  /** Keeps flags[1], the count of served queues, in step with this engine. */
  setAttached(on: boolean): void {
    if (on === this.attached) return;
    this.attached = on;
    Atomics.add(this.img.flags, 1, on ? 1 : -1);
  }

  /** Queues served across all workers (flags[1]). */
  private servedQueues(): number {
    return Atomics.load(this.img.flags, 1);
  }

  /**
   * Whether a READ/WRITE is copied in this thread (preadv/pwritev) rather than through io_uring. tmpfs: io_uring
   * would hand every op to io-wq. Small ones are cheaper here; large ones too once every CPU has a queue thread
   * (io-wq workers would only contend with them and, for writes, on the inode lock). ext4: small writes, see
   * writeInline().
   */
  copyInline(write: boolean, large: boolean): boolean {
    return this.img.memoryBacked === true ? !large || !this.cpuToSpare() : write && !large && this.writeInline();
  }

  /**
   * Whether a small buffered READ of a disk image may go to the copy helper as a cached-only read (the helper is
   * there only while a CPU is spare). io_uring would copy cached data inline in this thread; the helper copies it
   * on the spare CPU, and hands back what would wait for the device, which then goes to io_uring.
   */
  cachedReadToHelper(large: boolean): boolean {
    return !large && this.img.memoryBacked !== true && !((this.img.alignment ?? 0) > 0);
  }

  /** Fewer queues are served than there are CPUs: io-wq threads can run I/O beside the queue threads. */
  cpuToSpare(): boolean {
    return this.servedQueues() < CPUS;
  }

  /**
   * Buffered I/O is a memory copy (plus filesystem work for writes) done by whichever thread runs it:
   * inline in io_uring_enter, this thread, unless IOSQE_ASYNC hands it to an io-wq worker. With other
   * requests in flight, large reads are spread over the CPUs this queue has to itself (CopySpread): on
   * 2 CPUs and one queue every other one goes to io-wq, on 16 CPUs 15 of 16. With a queue per CPU the
   * other queues keep the CPUs busy instead. `alone`: nothing else is in flight or waiting.
   */
  offloadRead(alone: boolean): boolean {
    // A lone request has nothing to overlap with: keep it inline.
    if (alone) return false;
    return this.spread.next(this.servedQueues());
  }

  /**
   * ext4 (DiskImage.writesPunted): every io_uring write is an io-wq handoff. With no CPU for that worker
   * beyond this thread and one more (the driver's), the handoff costs more than the write: 4k random
   * writes on 2 CPUs went 351-358k -> 379-385k IOPS with one queue and 300-308k -> 467-483k with two.
   * With CPUs to spare the worker overlaps this thread instead (478-501k on 16 CPUs through io_uring).
   * A write that must wait (dirty throttling) then holds this queue, as a synchronous backend would.
   */
  private writeInline(): boolean {
    return this.img.writesPunted === true && this.spread.share(this.servedQueues()) <= 2;
  }
}
