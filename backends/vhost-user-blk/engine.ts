import { availableParallelism } from 'node:os';
import { SetupError } from '../../protocol/errors.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { ChainError, readFromChain, writeToChain, type DeviceQueue, type DescriptorChain, type Segment } from '../../protocol/virtqueue/index.js';
import {
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_DISCARD_SEG_SIZE, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../../protocol/virtio/index.js';
import {
  IoUring, IoVecArena, IORING_FSYNC_DATASYNC, IOSQE_IO_LINK, IOSQE_ASYNC, ECANCELED, ringRefusal,
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
} from '../../protocol/sys/uring.js';
import { WarnLimiter, type Logger } from '../../protocol/log.js';
import { errnoName } from '../../protocol/sys/libc.js';
import { closeQuiet, preadvRaw, pwritevRaw, reopenDescription } from '../../protocol/sys/fd.js';
import { blkDiscard, fallocateRaw, syncRaw } from '../../protocol/sys/fs.js';
import { CopySpread } from '../../protocol/sys/copy-spread.js';
import { mapAnonymous, type Mapping } from '../../protocol/sys/mem.js';
import { DirectZeroes, WriteGate, WRITEBACK_FAILED } from './bounce.js';
import { OP_SHIFT, PooledIo, POOLED_PENDING } from './pooled.js';
import { HostMap } from './host-map.js';
import { BlkLimits } from './limits.js';

const SECTOR = 512;
const TWO32 = 0x1_0000_0000;
const EOPNOTSUPP = 95;
const EIO = 5;
const SLOT_SHIFT = OP_SHIFT; // userData = slot + op * SLOT_SHIFT (+ ZERO_RANGE_OP)
/** Marks an fallocate(ZERO_RANGE) op, the one that falls back to punch + allocate on EOPNOTSUPP. */
const ZERO_RANGE_OP = 0x4000_0000;
/** userData flag of the fallocate that allocates a range again after a punch (WRITE_ZEROES without ZERO_RANGE). */
const ALLOC_OP = 0x8000_0000;

/** How often a failing image is said at most (see hostWarn). */
const HOST_WARN_MS = 5000;
const KIND_RW = 0;
const KIND_FLUSH = 1;
const KIND_DISCARD = 2;
const KIND_ZERO = 3;
/** A write in writethrough mode: acked only after a later fdatasync completed. */
const KIND_WT_WRITE = 4;
/** WRITE_ZEROES with UNMAP, its ranges punched: where punching is not supported they are zeroed the plain way. */
const KIND_ZERO_UNMAP = 5;
const KIND_NAMES = ['read/write', 'flush', 'discard', 'write-zeroes', 'write', 'write-zeroes'];
/** Segments a request may gain beyond seg_max from buffers that cross region boundaries (beyond: IOERR). */
const REGION_SPLITS = 16;
/** Sectors from 2^44 on (2^44 × 512 = 2^53 bytes, the largest exact offset) have this high word or more (it cut at 2^41). */
const MAX_SECTOR_HI = 1 << 12;
/** userData of the batch fdatasync (no slot has this index: queues have at most 32768 entries). */
const SYNC_UD = 0xffff;

/** What a queue engine needs to know about the image; `flags` is shared with the main thread. */
export interface BlkEngineImage {
  fd: number;
  size: number;
  readonly: boolean;
  /** Small reads and writes run with preadv/pwritev in this thread (see DiskImage.memoryBacked). */
  memoryBacked?: boolean;
  /** Small writes run with pwritev in this thread while no CPU is spare (see DiskImage.writesPunted). */
  writesPunted?: boolean;
  /** O_DIRECT: the block its offsets, lengths and buffers must keep to (see DiskImage.alignment); 0 otherwise. */
  alignment?: number;
  /** The device's logical block: fallocate takes whole ones (see DiskImage.logicalBlock); 512 if absent. */
  logicalBlock?: number;
  /**
   * A block device: fallocate(PUNCH_HOLE) there is a write-zeroes request, which a device that discards but cannot
   * write zeroes (most SATA SSDs) refuses; DISCARD then goes to it as BLKDISCARD, as QEMU sends it.
   */
  blockDevice?: boolean;
  /** 20-byte GET_ID answer. */
  serial: Uint8Array;
  /**
   * flags[0] = 1 while the device is in writethrough mode (WCE off, or FLUSH not negotiated);
   * flags[1] = how many queue engines are attached (serving a started ring), across all workers;
   * flags[2] = 1 once a write-back of a buffered image failed (WRITEBACK_FAILED, see syncFailed);
   * from flags[3] on, the WriteGate of O_DIRECT images with blocks larger than a sector (IMAGE_FLAGS_LENGTH in all).
   */
  flags: Int32Array;
}

/** Reads at least this large may go to io-wq threads (see BlkQueueEngine.offloadRead). */
const OFFLOAD_MIN_BYTES = 64 * 1024;
const CPUS = availableParallelism();
/** See BlkQueueEngine.drainAvail. */
const SMALL_GROUP = 8;
export type CompletionMode = 'eventfd' | 'wait';

export interface BlkEngineOptions {
  queueSize: number;
  completion: CompletionMode;
  log?: Logger;
  /** O_DIRECT requests off the alignment: the pool's byte limit and the piece size (tests make them small). */
  pooled?: { limit: number; piece: number };
}

/**
 * One virtio-blk queue's data path: drain the avail ring, turn requests into io_uring SQEs whose
 * iovecs point straight into guest memory, submit the batch in one enter, and return completions
 * to the used ring with one publish per batch. State per request lives in typed arrays (no per
 * request allocation beyond what DeviceQueue.pop() makes).
 */
export class BlkQueueEngine {
  readonly ring: IoUring;
  private readonly iov: IoVecArena;
  private readonly hostMap = new HostMap();
  private readonly maxIov: number;
  private readonly slots: number;
  // per-slot request state
  private readonly sHead: Uint16Array;
  private readonly sStatusGpa: Float64Array;
  private readonly sUsedLen: Uint32Array;
  private readonly sOps: Uint16Array;
  private readonly sStatus: Uint8Array;
  private readonly sExpect: Float64Array;
  private readonly sKind: Uint8Array;
  /** DISCARD/WRITE_ZEROES ranges per slot: [offset, len] × maxSeg (for the zero-range fallback). */
  private readonly sRanges: Float64Array;
  private readonly free: Uint16Array;
  private freeTop: number;
  private opsInFlight = 0;
  private queue: DeviceQueue | null = null;
  private mem: GuestMemory | null = null;
  private zeroRangeSupported = true;
  /** Whether punching a hole zeroes a range here (a block device needs write-zeroes with unmap for it). */
  private punchSupported = true;
  /** A block device refused a punch for DISCARD: discards go as BLKDISCARD from then on (see BlkEngineImage.blockDevice). */
  private discardIoctl = false;
  private readonly spread = new CopySpread();
  /** O_DIRECT: WRITE_ZEROES over part of a block. */
  private readonly zeroPart: DirectZeroes | null;
  /** O_DIRECT requests off the alignment, through pooled aligned buffers and io_uring (see PooledIo). */
  private readonly pooled: PooledIo | null;
  /** Zeroes for partial blocks of WRITE_ZEROES on a buffered block device (see wholeBlocks). */
  private zeroes: Mapping | null = null;
  /** O_DIRECT blocks larger than a sector: orders patches against other writes (null otherwise). */
  private readonly gate: WriteGate | null;
  /** Per slot: the run of gate stripes the slot's write is counted in (0: none). */
  private readonly sGateRun: Uint32Array;
  /** Per slot: 1 if the request is acked only after a group fdatasync (writethrough writes, zeroes, discards). */
  private readonly sSync: Uint8Array;
  /** Per READ/WRITE slot: its file offset and iovec count, negative for a write (to run it again, see redo()). */
  private readonly sOffset: Float64Array;
  private readonly sIovN: Int16Array;
  private cancelNoted = false;
  /** Reaps this engine's completions for a gate wait (starting a due group sync); false when it has none to wait for. */
  private readonly progress = (): boolean => {
    if (this.opsInFlight === 0 && this.unsyncedCount === 0) return false;
    if (this.opsInFlight > 0) this.ring.submit(1);
    this.gateWaits++;
    try {
      this.reapAll();
    } finally {
      this.gateWaits--;
    }
    return true;
  };
  /** Gate waits under way in this thread: parked pooled requests are not started inside one (see PooledIo.resume). */
  private gateWaits = 0;
  private attached = false;
  private readonly hdr = new Uint8Array(VIRTIO_BLK_OUTHDR_SIZE);
  private readonly hdrView = new DataView(this.hdr.buffer);
  private readonly segBuf = new Uint8Array(VIRTIO_BLK_DISCARD_SEG_SIZE);
  private readonly segView = new DataView(this.segBuf.buffer);
  private readonly onCqe = (ud: number, res: number): void => this.complete(ud, res);
  /** Completed requests since the last publish. */
  private completed = 0;
  /**
   * Writethrough group commit: writes whose data is written but not yet synced wait in `unsynced`;
   * one fdatasync covers all of them (those in `syncing` while it runs).
   */
  private readonly unsynced: Uint16Array;
  private unsyncedCount = 0;
  private readonly syncing: Uint16Array;
  private syncingCount = 0;
  private syncInFlight = false;

  /** Warnings about what the guest sent: rate-limited (see WarnLimiter). */
  private readonly guestWarn: WarnLimiter | null;
  /**
   * I/O on the image that failed (ENOSPC on a sparse image, EIO from a failing disk): the guest gets IOERR for each
   * request, and the operator a warning now and then (with the count held back) rather than none or one per request.
   */
  private readonly hostWarn: WarnLimiter | null;
  /**
   * This queue's own open file description of the image: the kernel tells each description of a write-back error
   * once, so with one description for all queues only the queue whose sync came first learned of it.
   */
  private readonly fd: number;

  constructor(private readonly img: BlkEngineImage, private readonly opts: BlkEngineOptions) {
    this.guestWarn = opts.log ? new WarnLimiter(opts.log) : null;
    this.hostWarn = opts.log ? new WarnLimiter(opts.log, 1, HOST_WARN_MS) : null;
    this.slots = opts.queueSize;
    // seg_max data segments, the header and status, and room for buffers split where they run over memory regions
    // lying back to back (DeviceQueue: one segment per region).
    this.maxIov = BlkLimits.segMax + 2 + REGION_SPLITS;
    // At least 8: one request may need two SQEs at once (a punch linked to an allocation, a block's head and tail).
    let entries = 8;
    while (entries < opts.queueSize) entries <<= 1;
    this.fd = reopenDescription(img.fd);
    try {
      this.ring = new IoUring(entries, { cqEntries: entries * 4, coopTaskrun: true });
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
      this.ring.setMaxWorkers(CPUS, CPUS);
    } catch {
      /* no IORING_REGISTER_IOWQ_MAX_WORKERS */
    }
    this.iov = new IoVecArena(this.slots, this.maxIov);
    const align = img.alignment ?? 0;
    this.zeroPart = align > 0 ? new DirectZeroes(this.fd, align, img.size) : null;
    this.gate = align > SECTOR ? new WriteGate(img.flags) : null;
    this.pooled = align > 0
      ? new PooledIo({
        ring: this.ring,
        fd: this.fd,
        end: img.size,
        gate: this.gate,
        progress: this.progress,
        mem: () => this.mem as GuestMemory,
        ensureSq: (k) => this.ensureSq(k),
        started: (k) => {
          this.opsInFlight += k;
        },
        cancelled: () => this.noteCancel(),
      }, align, opts.queueSize, opts.pooled?.piece, opts.pooled?.limit)
      : null;
    const n = this.slots;
    this.sHead = new Uint16Array(n);
    this.sStatusGpa = new Float64Array(n);
    this.sUsedLen = new Uint32Array(n);
    this.sOps = new Uint16Array(n);
    this.sStatus = new Uint8Array(n);
    this.sExpect = new Float64Array(n);
    this.sKind = new Uint8Array(n);
    this.sRanges = new Float64Array(n * BlkLimits.maxDiscardSeg * 2);
    this.sGateRun = new Uint32Array(n);
    this.sSync = new Uint8Array(n);
    this.sOffset = new Float64Array(n);
    this.sIovN = new Int16Array(n);
    this.unsynced = new Uint16Array(n);
    this.syncing = new Uint16Array(n);
    this.free = new Uint16Array(n);
    for (let i = 0; i < n; i++) this.free[i] = n - 1 - i;
    this.freeTop = n;
  }

  get inFlight(): number {
    return this.slots - this.freeTop;
  }

  /** Reads and writes copied by preadv/pwritev in this thread rather than through io_uring (memory-backed images). */
  inlineCopies = 0;

  /** Group fdatasyncs started for writethrough acks. */
  groupSyncs = 0;

  /** io-wq thread caps of this queue's ring: [bounded (file I/O), unbounded]. */
  ioWorkerCaps(): [number, number] {
    return this.ring.maxWorkers();
  }

  /**
   * Points the engine at the queue and memory to serve: call on ring start and before each
   * process*() (the daemon rebuilds both when the memory table changes).
   */
  attach(queue: DeviceQueue, mem: GuestMemory): void {
    this.queue = queue;
    this.setAttached(true);
    if (mem !== this.mem) {
      this.mem = mem;
      this.hostMap.sync(mem);
    }
  }

  /** Ring stop: waits for every in-flight request, publishes, detaches. Returns true if used entries were published. */
  detach(): boolean {
    this.drain();
    const published = this.queue !== null && this.publish();
    this.queue = null;
    this.mem = null;
    this.setAttached(false);
    return published;
  }

  /**
   * Takes every available request, submitting them group by group (see drainAvail) and reaping
   * what finished; `notify` signals the driver after each group that published completions.
   * Returns true when the last step published used entries (the caller then signals the driver).
   */
  processAvail(notify?: () => void): boolean {
    const q = this.queue;
    if (q === null) return false;
    this.hostMap.sync(this.mem as GuestMemory);
    for (;;) {
      q.disableNotifications();
      while (this.drainAvail(q)) {
        this.submitAndReap();
        if (this.publish()) notify?.();
      }
      this.submitAndReap();
      if (!q.enableNotifications()) break;
    }
    return this.publish();
  }

  /**
   * One busy-poll step, leaving the notification state alone (the poller keeps kicks disabled):
   * takes new requests, submits, reaps. Returns 0 if nothing happened, 1 if something did, 3 if
   * used entries were also published (bit 1: signal the driver).
   */
  pollStep(): number {
    const q = this.queue;
    if (q === null) return 0;
    let progressed = false;
    if (this.freeTop > 0 && q.hasAvailable()) {
      this.hostMap.sync(this.mem as GuestMemory);
      this.drainAvail(q);
      this.submitAndReap();
      progressed = true;
    } else if (this.ring.cqReady() > 0 || (this.unsyncedCount > 0 && !this.syncInFlight)) {
      this.reapAll();
      progressed = true;
    }
    if (!progressed) return 0;
    return this.publish() ? 3 : 1;
  }

  /** Completion eventfd fired (or a poll): reap completions and publish. */
  processCompletions(): boolean {
    if (this.queue === null) return false;
    if (this.ring.pending > 0) this.ring.submit(0);
    this.reapAll();
    return this.publish();
  }

  /** True if the driver made requests available that have not been taken yet. */
  hasAvailable(): boolean {
    return this.queue !== null && this.freeTop > 0 && this.queue.hasAvailable();
  }

  /** Blocks until every in-flight request completed (writethrough writes included: their sync too). */
  drain(): void {
    for (;;) {
      this.reapAll();
      if (this.opsInFlight === 0 && this.unsyncedCount === 0) {
        // Parked requests wait only for buffers that requests in flight hold, and reapAll() started them.
        if (this.pooled !== null && this.pooled.parked > 0) throw new Error('pooled requests parked with none in flight');
        return;
      }
      this.ring.submit(1);
    }
  }

  close(): void {
    this.drain();
    this.setAttached(false);
    this.ring.close();
    this.iov.free();
    this.zeroPart?.free();
    this.pooled?.free();
    this.zeroes?.unmap();
    closeQuiet(this.fd);
  }

  /** Keeps flags[1], the count of served queues, in step with this engine. */
  private setAttached(on: boolean): void {
    if (on === this.attached) return;
    this.attached = on;
    Atomics.add(this.img.flags, 1, on ? 1 : -1);
  }

  /** Queues served across all workers (flags[1]). */
  private servedQueues(): number {
    return Atomics.load(this.img.flags, 1);
  }

  /** Fewer queues are served than there are CPUs: io-wq threads can run I/O beside the queue threads. */
  private cpuToSpare(): boolean {
    return this.servedQueues() < CPUS;
  }

  /**
   * Buffered I/O is a memory copy (plus filesystem work for writes) done by whichever thread runs it:
   * inline in io_uring_enter, this thread, unless IOSQE_ASYNC hands it to an io-wq worker. With other
   * requests in flight, large reads are spread over the CPUs this queue has to itself (CopySpread): on
   * 2 CPUs and one queue every other one goes to io-wq, on 16 CPUs 15 of 16. With a queue per CPU the
   * other queues keep the CPUs busy instead.
   */
  private offloadRead(): boolean {
    // A lone request (nothing else in flight or waiting) has nothing to overlap with: keep it inline.
    if (this.opsInFlight <= 1 && !(this.queue as DeviceQueue).hasAvailable()) return false;
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

  /**
   * Starts available requests; returns true when it stopped after a group of small ones (more may be
   * waiting). Small requests go in groups of SMALL_GROUP so that their completions reach the driver
   * while this thread starts the next group: driver and device then overlap instead of taking turns.
   */
  private drainAvail(q: DeviceQueue): boolean {
    let taken = 0;
    let bytes = 0;
    while (this.freeTop > 0) {
      if (taken >= SMALL_GROUP && bytes < SMALL_GROUP * OFFLOAD_MIN_BYTES) return true;
      let chain: DescriptorChain | null;
      try {
        chain = q.pop();
      } catch (e) {
        if (e instanceof ChainError) {
          this.guestWarn?.warn({ err: e.message, ...e.context }, 'dropping malformed descriptor chain');
          // An empty answer leaves the status byte as it was, and Linux reads a stale one (OK) as the result:
          // IOERR where the status byte is still guest memory.
          const st = e.reach?.lastWritable;
          if (st) this.finishNow(e.head, st.addr + st.len - 1, VIRTIO_BLK_S_IOERR, 1);
          else if (q.returnMalformed(e)) this.completed++;
          continue;
        }
        throw e;
      }
      if (chain === null) return false;
      taken++;
      bytes += chain.readableLength + chain.writableLength;
      this.start(chain);
    }
    return false;
  }

  private submitAndReap(): void {
    const ring = this.ring;
    if (this.opts.completion === 'wait' && this.opsInFlight > 0) {
      ring.submit(this.opsInFlight);
    } else if (ring.pending > 0) {
      ring.submit(0);
    }
    this.reapAll();
    // 'wait' mode: a group sync started just now is waited for too.
    if (this.opts.completion === 'wait' && this.syncInFlight) {
      ring.submit(1);
      this.reapAll();
    }
  }

  /** Reaps completions, then starts the group fdatasync for writethrough writes if one is due. */
  private reapAll(): void {
    this.ring.reap(this.onCqe);
    if (this.gateWaits === 0) this.pooled?.resume();
    // Ops that completions started (a patch's write after its reads, a zero-range retry) go in now.
    if (this.ring.pending > 0) this.ring.submit(0);
    if (this.unsyncedCount > 0 && !this.syncInFlight) {
      const n = this.unsyncedCount;
      this.syncing.set(this.unsynced.subarray(0, n));
      this.syncingCount = n;
      this.unsyncedCount = 0;
      this.syncInFlight = true;
      this.groupSyncs++;
      this.opsInFlight++;
      this.ensureSq(1);
      this.ring.prepFsync(this.fd, SYNC_UD, IORING_FSYNC_DATASYNC);
      this.ring.submit(0);
    }
  }

  /**
   * Whether an fdatasync (a FLUSH, or the group sync of writethrough writes) failed. A buffered image's pages whose
   * write-back failed are marked clean and the error is reported once, so a later sync has nothing to write and
   * succeeds, for data that never reached the disk: one failure fails every later sync of every queue, as QEMU's
   * file driver stops trusting its page cache. O_DIRECT writes leave nothing behind in the page cache: each sync
   * counts alone there.
   */
  private syncFailed(res: number): boolean {
    if ((this.img.alignment ?? 0) > 0) return res < 0;
    if (res < 0 && Atomics.compareExchange(this.img.flags, WRITEBACK_FAILED, 0, 1) === 0) {
      this.opts.log?.error({ err: -res }, 'writing the image back failed: every FLUSH and writethrough write fails from now on (restart the back-end once the storage is fixed)');
    }
    return Atomics.load(this.img.flags, WRITEBACK_FAILED) !== 0;
  }

  private syncDone(res: number): void {
    this.syncInFlight = false;
    const failed = this.syncFailed(res);
    for (let i = 0; i < this.syncingCount; i++) {
      const slot = this.syncing[i];
      if (failed) this.sStatus[slot] = VIRTIO_BLK_S_IOERR;
      this.finishSlot(slot);
    }
    this.syncingCount = 0;
  }

  private publish(): boolean {
    if (this.completed === 0) return false;
    this.completed = 0;
    (this.queue as DeviceQueue).publishUsed();
    return true;
  }

  /** Completes a request that needs no I/O. */
  private finishNow(head: number, statusGpa: number, status: number, usedLen: number): void {
    if (statusGpa >= 0) this.writeStatus(statusGpa, status);
    (this.queue as DeviceQueue).pushUsed(head, statusGpa >= 0 ? usedLen : 0);
    this.completed++;
  }

  private writeStatus(gpa: number, status: number): boolean {
    try {
      (this.mem as GuestMemory).writeU8(gpa, status);
      return true;
    } catch {
      return false; // the region went away while the request was in flight
    }
  }

  private start(chain: DescriptorChain): void {
    const head = chain.head;
    const w = chain.writable;
    // The status byte is the chain's last writable byte.
    if (chain.writableLength < 1) {
      this.guestWarn?.warn({ head }, 'request without a status byte: dropped');
      this.finishNow(head, -1, 0, 0);
      return;
    }
    const last = w[w.length - 1];
    const statusGpa = last.addr + last.len - 1;
    // The used length covers the status byte, the last one: drivers may not look past it (as qsd reports).
    const used = chain.writableLength;
    if (chain.readableLength < VIRTIO_BLK_OUTHDR_SIZE) {
      this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
      return;
    }
    const mem = this.mem as GuestMemory;
    let type: number;
    let secLo: number;
    let secHi: number;
    const r0 = chain.readable[0];
    if (r0.len >= VIRTIO_BLK_OUTHDR_SIZE) {
      type = mem.readU32(r0.addr);
      secLo = mem.readU32(r0.addr + 8);
      secHi = mem.readU32(r0.addr + 12);
    } else {
      readFromChain(mem, chain.readable, 0, this.hdr);
      type = this.hdrView.getUint32(0, true);
      secLo = this.hdrView.getUint32(8, true);
      secHi = this.hdrView.getUint32(12, true);
    }
    // Sectors at 2^53 bytes and beyond are out of range for any image (DiskImage refuses larger ones).
    const offset = secHi >= MAX_SECTOR_HI ? -1 : (secHi * TWO32 + secLo) * SECTOR;

    switch (type) {
      case VIRTIO_BLK_T_IN: {
        const len = chain.writableLength - 1;
        if (!this.rangeOk(offset, len)) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
        if (len === 0) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
        this.startRw(head, statusGpa, w, 0, len, offset, false, used);
        return;
      }
      case VIRTIO_BLK_T_OUT: {
        const len = chain.readableLength - VIRTIO_BLK_OUTHDR_SIZE;
        if (this.img.readonly || !this.rangeOk(offset, len)) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
        if (len === 0) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
        this.startRw(head, statusGpa, chain.readable, VIRTIO_BLK_OUTHDR_SIZE, len, offset, true, used);
        return;
      }
      case VIRTIO_BLK_T_FLUSH: {
        if (this.img.readonly) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
        const slot = this.alloc(head, statusGpa, used, KIND_FLUSH, 0);
        this.sOps[slot] = 1;
        this.opsInFlight++;
        this.ensureSq(1);
        this.ring.prepFsync(this.fd, slot, IORING_FSYNC_DATASYNC);
        return;
      }
      case VIRTIO_BLK_T_GET_ID: {
        const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableLength - 1);
        writeToChain(mem, w, 0, this.img.serial.subarray(0, n));
        return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        this.startRanges(chain, statusGpa, type === VIRTIO_BLK_T_DISCARD);
        return;
      default:
        this.finishNow(head, statusGpa, VIRTIO_BLK_S_UNSUPP, used);
    }
  }

  private rangeOk(offset: number, len: number): boolean {
    return offset >= 0 && len % SECTOR === 0 && offset + len <= this.img.size;
  }

  private alloc(head: number, statusGpa: number, usedLen: number, kind: number, expect: number): number {
    const slot = this.free[--this.freeTop];
    this.sHead[slot] = head;
    this.sStatusGpa[slot] = statusGpa;
    this.sUsedLen[slot] = usedLen;
    this.sOps[slot] = 0;
    this.sStatus[slot] = VIRTIO_BLK_S_OK;
    this.sKind[slot] = kind;
    this.sExpect[slot] = expect;
    this.sSync[slot] = kind === KIND_WT_WRITE ? 1 : 0;
    return slot;
  }

  /** Makes room for k SQEs (submitting what is queued if needed). */
  private ensureSq(k: number): void {
    if (this.ring.sqSpace() >= k) return;
    this.ring.submit(0);
    while (this.ring.sqSpace() < k) {
      // The kernel refused more work (CQ backpressure): wait for completions to make room.
      this.ring.submit(1);
      this.ring.reap(this.onCqe);
    }
  }

  /** READ/WRITE(V) of `len` bytes: the segments minus `skip` leading bytes (the header) and the status byte. */
  private startRw(head: number, statusGpa: number, segs: Segment[], skip: number, len: number, offset: number, write: boolean, usedLen: number): void {
    const writethrough = write && Atomics.load(this.img.flags, 0) !== 0;
    const slot = this.alloc(head, statusGpa, usedLen, writethrough ? KIND_WT_WRITE : KIND_RW, len);
    const map = this.hostMap;
    const align = this.pooled === null ? 0 : this.pooled.alignment;
    let misaligned = align > 0 && (offset % align !== 0 || len % align !== 0);
    const segSkip = skip;
    let left = len;
    let n = 0;
    let single = -1;
    for (let i = 0; i < segs.length && left > 0; i++) {
      const s = segs[i];
      let a = s.addr;
      let l = s.len;
      if (skip > 0) {
        const k = Math.min(skip, l);
        skip -= k;
        a += k;
        l -= k;
        if (l === 0) continue;
      }
      if (l > left) l = left;
      const host = map.translate(a, l);
      if (host < 0 || n >= this.maxIov) {
        this.free[this.freeTop++] = slot;
        return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, usedLen);
      }
      if (n === 0) single = host;
      if (align > 0 && (host % align !== 0 || l % align !== 0)) misaligned = true;
      this.iov.set(slot, n++, host, l);
      left -= l;
    }
    const fd = this.fd;
    // Gate waits reap this engine's completions: this slot is counted in flight only after them.
    if (misaligned) {
      (this.pooled as PooledIo).start(slot, segs, segSkip, offset, len, write);
      return;
    }
    if (write && this.gate !== null) {
      const run = WriteGate.stripes(offset, len);
      this.gate.enter(run, this.progress);
      this.sGateRun[slot] = run;
    }
    this.sOps[slot] = 1;
    this.opsInFlight++;
    this.sOffset[slot] = offset;
    this.sIovN[slot] = write ? -n : n;
    const large = len >= OFFLOAD_MIN_BYTES;
    // tmpfs: io_uring would hand every op to io-wq. Small ones are cheaper here; large ones too once every
    // CPU has a queue thread (io-wq workers would only contend with them and, for writes, on the inode lock).
    // ext4: small writes, see writeInline().
    if (this.img.memoryBacked === true ? !large || !this.cpuToSpare() : write && !large && this.writeInline()) {
      const iovAddr = this.iov.slotAddress(slot);
      this.inlineCopies++;
      this.complete(slot, write ? pwritevRaw(fd, iovAddr, n, offset) : preadvRaw(fd, iovAddr, n, offset));
      return;
    }
    this.ensureSq(1);
    if (write) {
      // Left to io_uring (inline where the filesystem can go on without blocking): forcing writes to
      // io-wq measured slower on ext4 and tmpfs alike once completions stopped costing an IPI.
      if (n === 1) this.ring.prepWrite(fd, single, len, offset, slot);
      else this.ring.prepWritev(fd, this.iov.slotAddress(slot), n, offset, slot);
    } else {
      const sqeFlags = large && this.offloadRead() ? IOSQE_ASYNC : 0;
      if (n === 1) this.ring.prepRead(fd, single, len, offset, slot, 0, sqeFlags);
      else this.ring.prepReadv(fd, this.iov.slotAddress(slot), n, offset, slot, 0, sqeFlags);
    }
  }

  /** Zeroes part of a block of an O_DIRECT image in this thread, holding its gate stripes' locks; len or -errno. */
  private zeroPartGated(z: DirectZeroes, offset: number, len: number): number {
    const gate = this.gate;
    if (gate === null) return z.zero(offset, len);
    const run = WriteGate.stripesFor(offset, len, true, z.alignment, this.img.size);
    gate.lock(run, this.progress);
    try {
      return z.zero(offset, len);
    } finally {
      gate.unlock(run);
    }
  }

  /** DISCARD / WRITE_ZEROES: one fallocate per range. */
  private startRanges(chain: DescriptorChain, statusGpa: number, discard: boolean): void {
    const head = chain.head;
    const used = chain.writableLength;
    const payload = chain.readableLength - VIRTIO_BLK_OUTHDR_SIZE;
    const count = payload / VIRTIO_BLK_DISCARD_SEG_SIZE;
    const max = discard ? BlkLimits.maxDiscardSeg : BlkLimits.maxWriteZeroesSeg;
    if (this.img.readonly || count < 1 || !Number.isInteger(count) || count > max) {
      return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
    }
    const mem = this.mem as GuestMemory;
    const base = this.free[this.freeTop - 1] * BlkLimits.maxDiscardSeg * 2; // the slot alloc() will take
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
        return this.finishNow(head, statusGpa, VIRTIO_BLK_S_UNSUPP, used);
      }
      const max = discard ? BlkLimits.maxDiscardSectors : BlkLimits.maxWriteZeroesSectors;
      const off = hi >= MAX_SECTOR_HI ? -1 : (hi * TWO32 + lo) * SECTOR;
      if (num > max || !this.rangeOk(off, num * SECTOR)) {
        outOfRange = true;
        continue;
      }
      this.sRanges[base + 2 * i] = off;
      this.sRanges[base + 2 * i + 1] = num * SECTOR;
      if (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) unmap = true;
    }
    if (outOfRange) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
    unmap &&= this.punchSupported;
    const kind = discard ? KIND_DISCARD : unmap ? KIND_ZERO_UNMAP : KIND_ZERO;
    const slot = this.alloc(head, statusGpa, used, kind, 0);
    // Writethrough: like writes, acked once an fdatasync after them completed.
    if (Atomics.load(this.img.flags, 0) !== 0) this.sSync[slot] = 1;
    const block = this.img.logicalBlock ?? SECTOR;
    if (block > SECTOR) this.wholeBlocks(slot, base, count, block, discard);
    if (this.gate !== null) {
      // One run of stripes over all the ranges (more than they need when they lie apart: fine for a rare request).
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = 0; i < count; i++) {
        const off = this.sRanges[base + 2 * i];
        const len = this.sRanges[base + 2 * i + 1];
        if (len === 0) continue;
        lo = Math.min(lo, off);
        hi = Math.max(hi, off + len);
      }
      if (hi > lo) {
        const run = WriteGate.stripes(lo, hi - lo);
        this.gate.enter(run, this.progress);
        this.sGateRun[slot] = run;
      }
    }
    const fd = this.fd;
    for (let i = 0; i < count; i++) {
      const off = this.sRanges[base + 2 * i];
      const len = this.sRanges[base + 2 * i + 1];
      if (len === 0) continue;
      if (discard && this.discardIoctl) {
        this.discardRange(slot, i);
        continue;
      }
      const mode = discard || unmap || !this.zeroRangeSupported
        ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
      this.sOps[slot]++;
      this.opsInFlight++;
      const zeroRange = (mode & FALLOC_FL_ZERO_RANGE) !== 0;
      const ud = slot + i * SLOT_SHIFT + (zeroRange ? ZERO_RANGE_OP : 0);
      this.ensureSq(2);
      if (!discard && !unmap && !this.zeroRangeSupported) {
        // Punch (reads as zeroes) and allocate again: zeroed, still allocated.
        this.sOps[slot]++;
        this.opsInFlight++;
        this.ring.prepFallocate(fd, mode, off, len, ud, IOSQE_IO_LINK);
        this.ring.prepFallocate(fd, FALLOC_FL_KEEP_SIZE, off, len, ud + ALLOC_OP);
      } else {
        this.ring.prepFallocate(fd, mode, off, len, ud);
      }
    }
    if (this.sOps[slot] === 0) this.settle(slot);
  }

  /**
   * A block device takes fallocate on whole logical blocks only: each range is cut to the blocks it covers.
   * WRITE_ZEROES writes zeroes over the partial blocks at either end; DISCARD, a hint, leaves them alone.
   */
  private wholeBlocks(slot: number, base: number, count: number, block: number, discard: boolean): void {
    for (let i = 0; i < count; i++) {
      const off = this.sRanges[base + 2 * i];
      const end = off + this.sRanges[base + 2 * i + 1];
      const lo = Math.ceil(off / block) * block;
      const hi = Math.floor(end / block) * block;
      if (!discard && end > off) {
        const headEnd = Math.min(lo, end);
        const tail = Math.max(hi, headEnd);
        if ((headEnd > off && this.writeZeroes(slot, off, headEnd - off) < 0) || (end > tail && this.writeZeroes(slot, tail, end - tail) < 0)) {
          this.sStatus[slot] = VIRTIO_BLK_S_IOERR;
        }
      }
      this.sRanges[base + 2 * i] = lo;
      this.sRanges[base + 2 * i + 1] = Math.max(0, hi - lo);
    }
  }

  /** Zeroes part of one block, now, in this thread; returns len or -errno. */
  private writeZeroes(slot: number, offset: number, len: number): number {
    // O_DIRECT: read the block, zero the part, write it back, ordered against other writes like any patch.
    if (this.zeroPart !== null) return this.zeroPartGated(this.zeroPart, offset, len);
    // Buffered: the kernel patches the block in its page cache.
    this.zeroes ??= mapAnonymous(this.img.logicalBlock ?? SECTOR);
    this.iov.set(slot, 0, Number(this.zeroes.ptr), len);
    const n = pwritevRaw(this.fd, this.iov.slotAddress(slot), 1, offset);
    return n === len ? len : n < 0 ? n : -EIO;
  }

  private ioFailed(kind: number, res: number): void {
    this.hostWarn?.warn({ err: res < 0 ? errnoName(-res) : 'short transfer', op: KIND_NAMES[kind] ?? kind }, 'I/O on the image failed: the guest gets IOERR');
  }

  private complete(ud: number, res: number): void {
    this.opsInFlight--;
    if (ud === SYNC_UD) {
      this.syncDone(res === -ECANCELED ? this.redo(-1) : res);
      return;
    }
    const slot = ud & 0xffff;
    const pooled = this.pooled;
    if (res === -ECANCELED && (pooled === null || !pooled.owns(slot))) res = this.redoCancelled(ud, slot);
    if (pooled !== null && pooled.owns(slot)) {
      const failed = pooled.complete(slot, (ud >>> 16) & 0x3fff, res);
      if (failed === POOLED_PENDING) return;
      if (failed === 1) {
        this.sStatus[slot] = VIRTIO_BLK_S_IOERR;
        this.ioFailed(this.sKind[slot], res);
      }
      this.settle(slot);
      return;
    }
    if (this.sKind[slot] === KIND_FLUSH) {
      if (this.syncFailed(res)) this.sStatus[slot] = VIRTIO_BLK_S_IOERR;
    } else if (res < 0) {
      const kind = this.sKind[slot];
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
        if (this.sStatus[slot] === VIRTIO_BLK_S_OK) this.sStatus[slot] = VIRTIO_BLK_S_UNSUPP;
      } else if ((ud & ZERO_RANGE_OP) !== 0 && res === -EOPNOTSUPP) {
        this.zeroRangeSupported = false;
        this.retryZero(slot, ((ud & ~ZERO_RANGE_OP) >>> 16) & 0x3fff);
      } else {
        this.sStatus[slot] = VIRTIO_BLK_S_IOERR;
        this.ioFailed(kind, res);
      }
    } else if ((this.sKind[slot] === KIND_RW || this.sKind[slot] === KIND_WT_WRITE) && res !== this.sExpect[slot]) {
      this.sStatus[slot] = VIRTIO_BLK_S_IOERR; // short transfer
      this.ioFailed(this.sKind[slot], res);
    }
    if (--this.sOps[slot] !== 0) return;
    this.settle(slot);
  }

  /**
   * An op io_uring cancelled without running it (-ECANCELED: io-wq could not start a worker thread, at a pids or
   * RLIMIT_NPROC limit) is run here instead; its result. It is no I/O error, and above all no failed write-back,
   * which would fail every later FLUSH.
   */
  private redoCancelled(ud: number, slot: number): number {
    const kind = this.sKind[slot];
    if (kind === KIND_FLUSH) return this.redo(-1);
    if (kind === KIND_RW || kind === KIND_WT_WRITE) return this.redo(slot);
    // The allocation linked after a punch is cancelled when the punch failed too: redone only after a punch that did not.
    if ((ud & ALLOC_OP) !== 0 && this.sStatus[slot] !== VIRTIO_BLK_S_OK) return -ECANCELED;
    this.noteCancel();
    const i = ((ud & ~(ZERO_RANGE_OP | ALLOC_OP)) >>> 16) & 0x3fff;
    const mode = (ud & ALLOC_OP) !== 0 ? FALLOC_FL_KEEP_SIZE
      : (ud & ZERO_RANGE_OP) !== 0 ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
        : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    return fallocateRaw(this.fd, mode, this.sRanges[base + 2 * i], this.sRanges[base + 2 * i + 1]);
  }

  /** A cancelled op run here: slot -1 the fdatasync, else the slot's READ/WRITE. */
  private redo(slot: number): number {
    this.noteCancel();
    if (slot < 0) return syncRaw(this.fd);
    const n = this.sIovN[slot];
    const iov = this.iov.slotAddress(slot);
    return n < 0 ? pwritevRaw(this.fd, iov, -n, this.sOffset[slot]) : preadvRaw(this.fd, iov, n, this.sOffset[slot]);
  }

  private noteCancel(): void {
    if (this.cancelNoted) return;
    this.cancelNoted = true;
    this.opts.log?.warn('io_uring could not start a worker thread (a pids or RLIMIT_NPROC limit?): such operations run on the queue thread');
  }

  /** A request whose operations all completed: acked now, or after the next group fdatasync. */
  private settle(slot: number): void {
    if (this.sSync[slot] === 1 && this.sStatus[slot] === VIRTIO_BLK_S_OK) {
      this.unsynced[this.unsyncedCount++] = slot;
      return;
    }
    this.finishSlot(slot);
  }

  /**
   * BLKDISCARD of range i of the slot's DISCARD, in this thread (io_uring has no discard before Linux 6.12's
   * URING_CMD); its failure is ignored, a discard being a hint.
   */
  private discardRange(slot: number, i: number): void {
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    const r = blkDiscard(this.fd, this.sRanges[base + 2 * i], this.sRanges[base + 2 * i + 1]);
    if (r < 0) this.opts.log?.debug({ errno: -r }, 'BLKDISCARD failed');
  }

  /** fallocate(ZERO_RANGE) of range i of the slot's request, in place of a punch that was refused. */
  private zeroRange(slot: number, i: number): void {
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    this.sOps[slot]++;
    this.opsInFlight++;
    this.ensureSq(1);
    const mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    this.ring.prepFallocate(this.fd, mode, this.sRanges[base + 2 * i], this.sRanges[base + 2 * i + 1], slot + i * SLOT_SHIFT + ZERO_RANGE_OP);
  }

  private retryZero(slot: number, i: number): void {
    const base = slot * BlkLimits.maxDiscardSeg * 2;
    const off = this.sRanges[base + 2 * i];
    const len = this.sRanges[base + 2 * i + 1];
    const fd = this.fd;
    const ud = slot + i * SLOT_SHIFT;
    this.sOps[slot] += 2;
    this.opsInFlight += 2;
    this.ensureSq(2);
    this.ring.prepFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len, ud, IOSQE_IO_LINK);
    this.ring.prepFallocate(fd, FALLOC_FL_KEEP_SIZE, off, len, ud + ALLOC_OP);
  }

  private finishSlot(slot: number): void {
    const run = this.sGateRun[slot];
    if (run !== 0) {
      this.sGateRun[slot] = 0;
      (this.gate as WriteGate).leave(run);
    }
    const ok = this.writeStatus(this.sStatusGpa[slot], this.sStatus[slot]);
    (this.queue as DeviceQueue).pushUsed(this.sHead[slot], ok ? this.sUsedLen[slot] : 0);
    this.completed++;
    this.free[this.freeTop++] = slot;
  }
}
