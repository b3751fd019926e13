import type { GuestMemory } from '../../protocol/memory/index.js';
import { ChainError, writeToChain, type DeviceQueue, type DescriptorChain, type Segment } from '../../protocol/virtqueue/index.js';
import {
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_OUTHDR_SIZE,
} from '../../protocol/virtio/index.js';
import { type IoUring, IOSQE_ASYNC, ECANCELED } from '../../protocol/sys/uring.js';
import { EAGAIN, EINVAL, EOPNOTSUPP, closeQuiet, preadvRaw, pwritevRaw, reopenDescription } from '../../protocol/sys/fd.js';
import { WriteGate } from './bounce.js';
import { PooledIo, POOLED_PENDING, type PooledHost } from './pooled.js';
import { HostMap } from './host-map.js';
import type { BlkEngineImage, BlkEngineOptions } from './engine-image.js';
import { CopyPlacement, OFFLOAD_MIN_BYTES, queueRing } from './copy-placement.js';
import { CancelledOps } from './cancelled-ops.js';
import { CopyHelper } from '../../protocol/sys/copy-helper.js';
import { OP_READ, OP_READ_CACHED, OP_WRITE } from '../../protocol/sys/copy-helper-layout.js';
import { EngineWarnings } from './engine-warnings.js';
import { RangeRequests, type RangeHost } from './range-requests.js';
import { RequestHeader, SECTOR, rangeOk } from './request-header.js';
import { RequestSlots, KIND_RW, KIND_FLUSH, KIND_WT_WRITE, SYNC_UD } from './request-slots.js';
import { SyncRequests, type SyncHost } from './sync-requests.js';

export type { BlkEngineImage, BlkEngineOptions, CompletionMode } from './engine-image.js';

/** KUMO_BLK_COPY_HELPER=0: no copy helper (to compare). */
const HELPER_ON = process.env.KUMO_BLK_COPY_HELPER !== '0';
/** Copies waiting for the helper beyond which this thread copies too (4k QD32 on 2 CPUs: 24 best, 2 slower than no helper). */
const HELPER_BACKLOG = 24;
const HELPER_RING = 32;
/** The helper polls this long for more copies after a burst, then sleeps. */
const HELPER_SPIN_US = 200;

/** Marks a helper copy's tag as a cached-only READ (OP_READ_CACHED): what it could not read goes to io_uring. */
const CACHED_READ_TAG = 1 << 30;
/** After a cached-only READ found data out of the page cache, this many READs go straight to io_uring. */
const CACHED_READ_BACKOFF = 64;

/** See BlkQueueEngine.drainAvail. */
const SMALL_GROUP = 8;

/**
 * One virtio-blk queue's data path: drain the avail ring, turn requests into io_uring SQEs whose
 * iovecs point straight into guest memory, submit the batch in one enter, and return completions
 * to the used ring with one publish per batch. State per request lives in typed arrays (no per
 * request allocation beyond what DeviceQueue.pop() makes). The colder parts live beside it: DISCARD and
 * WRITE_ZEROES (RangeRequests), FLUSH and the writethrough group sync (SyncRequests), cancelled ops (CancelledOps).
 */
export class BlkQueueEngine {
  readonly ring: IoUring;
  private readonly slots: RequestSlots;
  private readonly hostMap = new HostMap();
  private opsInFlight = 0;
  /** Of opsInFlight, those handed to the copy helper. */
  private helperOps = 0;
  /** Started on first use (see copyHelper). */
  private helper: CopyHelper | null = null;
  private helperRefused = false;
  private readonly onHelperDone = (tag: number, res: number): void => {
    this.helperOps--;
    if ((tag & CACHED_READ_TAG) !== 0) {
      tag &= ~CACHED_READ_TAG;
      // Anything but the whole READ is read again through io_uring, whose result stands: -EAGAIN or a short count
      // (data out of the page cache), a file system that refuses RWF_NOWAIT (FUSE, tmpfs: -EOPNOTSUPP; kernels
      // without it: -EINVAL), or an error io_uring will report itself.
      if (res !== this.slots.expect[tag]) {
        if (res === -EOPNOTSUPP || res === -EINVAL) this.cachedReads = false;
        else if (res === -EAGAIN || res >= 0) this.cachedReadMisses++;
        this.cachedReadBackoff = CACHED_READ_BACKOFF;
        return this.readFromDevice(tag);
      }
    }
    this.complete(tag, res);
  };
  /** READs left before the copy helper takes cached-only READs again (see CACHED_READ_BACKOFF). */
  private cachedReadBackoff = 0;
  /** False once the image's file system refused a cached-only READ: READs then always go to io_uring. */
  cachedReads = true;
  private queue: DeviceQueue | null = null;
  private mem: GuestMemory | null = null;
  private readonly placement: CopyPlacement;
  private readonly ranges: RangeRequests;
  /** O_DIRECT requests off the alignment, through pooled aligned buffers and io_uring (see PooledIo). */
  private readonly pooled: PooledIo | null;
  /** O_DIRECT blocks larger than a sector: orders patches against other writes (null otherwise). */
  private readonly gate: WriteGate | null;
  private readonly cancels: CancelledOps;
  /** Reaps this engine's completions for a gate wait (starting a due group sync); false when it has none to wait for. */
  private readonly progress = (): boolean => {
    if (this.opsInFlight === 0 && this.syncs.waits === 0) return false;
    this.waitSome();
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
  private readonly header = new RequestHeader();
  private readonly onCqe = (ud: number, res: number): void => this.complete(ud, res);
  /** Completed requests since the last publish. */
  private completed = 0;
  private readonly syncs: SyncRequests;
  private readonly warn: EngineWarnings;
  /**
   * This queue's own open file description of the image: the kernel tells each description of a write-back error
   * once, so with one description for all queues only the queue whose sync came first learned of it.
   */
  private readonly fd: number;

  constructor(private readonly img: BlkEngineImage, private readonly opts: BlkEngineOptions) {
    this.warn = new EngineWarnings(opts.log);
    this.fd = reopenDescription(img.fd);
    this.ring = queueRing(opts.queueSize);
    this.slots = new RequestSlots(opts.queueSize);
    this.placement = new CopyPlacement(img);
    const align = img.alignment ?? 0;
    this.gate = align > SECTOR ? new WriteGate(img.flags) : null;
    const host: PooledHost & RangeHost & SyncHost = {
      ring: this.ring,
      fd: this.fd,
      end: img.size,
      img,
      slots: this.slots,
      gate: this.gate,
      progress: this.progress,
      log: opts.log,
      mem: () => this.mem as GuestMemory,
      ensureSq: (k) => this.ensureSq(k),
      started: (k) => {
        this.opsInFlight += k;
      },
      cancelled: () => this.cancels.note(),
      finishNow: (head, statusGpa, status, usedLen) => this.finishNow(head, statusGpa, status, usedLen),
      settle: (slot) => this.settle(slot),
      finishSlot: (slot) => this.finishSlot(slot),
    };
    this.syncs = new SyncRequests(host);
    this.ranges = new RangeRequests(host);
    this.cancels = new CancelledOps(this.fd, this.slots, this.ranges, opts.log);
    this.pooled = align > 0 ? new PooledIo(host, align, opts.queueSize, opts.pooled?.piece, opts.pooled?.limit) : null;
  }

  get inFlight(): number {
    return this.slots.count - this.slots.freeCount;
  }

  /** Reads and writes copied by preadv/pwritev in this thread rather than through io_uring (memory-backed images). */
  inlineCopies = 0;

  /** Reads and writes copied by the copy helper's thread (cached-only READs included, whether they found the data or not). */
  helperCopies = 0;

  /** Cached-only READs of the copy helper that found data out of the page cache and went to io_uring. */
  cachedReadMisses = 0;

  /** Group fdatasyncs started for writethrough acks. */
  get groupSyncs(): number {
    return this.syncs.groups;
  }

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
    this.placement.setAttached(true);
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
    this.placement.setAttached(false);
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
    if (this.slots.freeCount > 0 && q.hasAvailable()) {
      this.hostMap.sync(this.mem as GuestMemory);
      this.drainAvail(q);
      this.submitAndReap();
      progressed = true;
    } else if (this.ring.cqReady() > 0 || this.syncs.groupDue || (this.helperOps > 0 && (this.helper as CopyHelper).hasResults())) {
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
    return this.queue !== null && this.slots.freeCount > 0 && this.queue.hasAvailable();
  }

  /** Blocks until every in-flight request completed (writethrough writes included: their sync too). */
  drain(): void {
    for (;;) {
      this.reapAll();
      if (this.opsInFlight === 0 && this.syncs.waits === 0) {
        // Parked requests wait only for buffers that requests in flight hold, and reapAll() started them.
        if (this.pooled !== null && this.pooled.parked > 0) throw new Error('pooled requests parked with none in flight');
        return;
      }
      this.waitSome();
    }
  }

  /** Waits for a completion: of io_uring when it has ops in flight, else of the copy helper. */
  private waitSome(): void {
    if (this.opsInFlight - this.helperOps > 0 || this.helperOps === 0) this.ring.submit(1);
    else (this.helper as CopyHelper).waitResult();
  }

  close(): void {
    this.drain();
    if (this.helper !== null && !this.helper.close()) this.opts.log?.warn('the copy helper thread did not stop');
    this.placement.setAttached(false);
    this.ring.close();
    this.slots.close();
    this.ranges.free();
    this.pooled?.free();
    closeQuiet(this.fd);
  }

  /**
   * Starts available requests; returns true when it stopped after a group of small ones (more may be
   * waiting). Small requests go in groups of SMALL_GROUP so that their completions reach the driver
   * while this thread starts the next group: driver and device then overlap instead of taking turns.
   */
  private drainAvail(q: DeviceQueue): boolean {
    let taken = 0;
    let bytes = 0;
    while (this.slots.freeCount > 0) {
      if (taken >= SMALL_GROUP && bytes < SMALL_GROUP * OFFLOAD_MIN_BYTES) return true;
      let chain: DescriptorChain | null;
      try {
        chain = q.pop();
      } catch (e) {
        if (e instanceof ChainError) {
          this.warn.malformedChain(e);
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
    if (this.opts.completion === 'wait' && this.syncs.groupInFlight) {
      ring.submit(1);
      this.reapAll();
    }
  }

  /** Reaps completions, then starts the group fdatasync for writethrough writes if one is due. */
  private reapAll(): void {
    this.ring.reap(this.onCqe);
    if (this.helperOps > 0) (this.helper as CopyHelper).reap(this.onHelperDone);
    if (this.gateWaits === 0) this.pooled?.resume();
    // Ops that completions started (a patch's write after its reads, a zero-range retry) go in now.
    if (this.ring.pending > 0) this.ring.submit(0);
    if (this.syncs.groupDue) this.syncs.startGroup();
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
      this.warn.noStatusByte(head);
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
    this.header.read(mem, chain.readable);
    const type = this.header.type;
    const offset = this.header.offset;
    const size = this.img.size;

    switch (type) {
      case VIRTIO_BLK_T_IN: {
        const len = chain.writableLength - 1;
        if (!rangeOk(offset, len, size)) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
        if (len === 0) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
        this.startRw(head, statusGpa, w, 0, len, offset, false, used);
        return;
      }
      case VIRTIO_BLK_T_OUT: {
        const len = chain.readableLength - VIRTIO_BLK_OUTHDR_SIZE;
        if (this.img.readonly || !rangeOk(offset, len, size)) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, used);
        if (len === 0) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
        this.startRw(head, statusGpa, chain.readable, VIRTIO_BLK_OUTHDR_SIZE, len, offset, true, used);
        return;
      }
      case VIRTIO_BLK_T_FLUSH: {
        if (this.img.readonly) return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
        this.syncs.flush(head, statusGpa, used);
        return;
      }
      case VIRTIO_BLK_T_GET_ID: {
        const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableLength - 1);
        writeToChain(mem, w, 0, this.img.serial.subarray(0, n));
        return this.finishNow(head, statusGpa, VIRTIO_BLK_S_OK, used);
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        this.ranges.start(chain, statusGpa, type === VIRTIO_BLK_T_DISCARD);
        return;
      default:
        this.finishNow(head, statusGpa, VIRTIO_BLK_S_UNSUPP, used);
    }
  }

  /**
   * The thread that copies beside this one, when a CPU is spare for it (fewer queues served than CPUs) and
   * completions come by eventfd; null otherwise and until its thread runs.
   */
  private copyHelper(): CopyHelper | null {
    if (!HELPER_ON || this.opts.wakeFd === undefined || this.opts.completion !== 'eventfd' || !this.placement.cpuToSpare()) return null;
    if (this.helper === null) {
      if (this.helperRefused) return null;
      try {
        this.helper = new CopyHelper(HELPER_RING, this.opts.wakeFd, HELPER_SPIN_US);
      } catch (e) {
        // No thread to be had (a pids limit, RLIMIT_NPROC): this thread copies, as it would with a CPU less.
        this.helperRefused = true;
        this.opts.log?.warn({ err: e }, 'no copy helper thread; the queue thread copies');
        return null;
      }
    }
    return this.helper.ready ? this.helper : null;
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
    const s = this.slots;
    const iov = s.iov;
    const writethrough = write && Atomics.load(this.img.flags, 0) !== 0;
    const slot = s.alloc(head, statusGpa, usedLen, writethrough ? KIND_WT_WRITE : KIND_RW, len);
    const map = this.hostMap;
    const align = this.pooled === null ? 0 : this.pooled.alignment;
    let misaligned = align > 0 && (offset % align !== 0 || len % align !== 0);
    const segSkip = skip;
    let left = len;
    let n = 0;
    let single = -1;
    for (let i = 0; i < segs.length && left > 0; i++) {
      const seg = segs[i];
      let a = seg.addr;
      let l = seg.len;
      if (skip > 0) {
        const k = Math.min(skip, l);
        skip -= k;
        a += k;
        l -= k;
        if (l === 0) continue;
      }
      if (l > left) l = left;
      const host = map.translate(a, l);
      if (host < 0 || n >= iov.perSlot) {
        s.release(slot);
        return this.finishNow(head, statusGpa, VIRTIO_BLK_S_IOERR, usedLen);
      }
      if (n === 0) single = host;
      if (align > 0 && (host % align !== 0 || l % align !== 0)) misaligned = true;
      iov.set(slot, n++, host, l);
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
      s.gateRun[slot] = run;
    }
    s.ops[slot] = 1;
    this.opsInFlight++;
    s.offset[slot] = offset;
    s.iovN[slot] = write ? -n : n;
    const large = len >= OFFLOAD_MIN_BYTES;
    if (this.placement.copyInline(write, large)) {
      const iovAddr = iov.slotAddress(slot);
      // With other requests to serve, the helper copies while this thread goes on with them. A lone request
      // gains nothing from the handover.
      const h = this.opsInFlight > 1 || (this.queue as DeviceQueue).hasAvailable() ? this.copyHelper() : null;
      if (h !== null && h.backlog < HELPER_BACKLOG) {
        this.helperOps++;
        this.helperCopies++;
        h.submit(fd, iovAddr, n, offset, write ? OP_WRITE : OP_READ, slot);
        return;
      }
      this.inlineCopies++;
      this.complete(slot, write ? pwritevRaw(fd, iovAddr, n, offset) : preadvRaw(fd, iovAddr, n, offset));
      return;
    }
    if (!write && this.cachedReads && this.placement.cachedReadToHelper(large)) {
      if (this.cachedReadBackoff > 0) this.cachedReadBackoff--;
      else {
        const h = this.opsInFlight > 1 || (this.queue as DeviceQueue).hasAvailable() ? this.copyHelper() : null;
        if (h !== null && h.backlog < HELPER_BACKLOG) {
          this.helperOps++;
          this.helperCopies++;
          h.submit(fd, iov.slotAddress(slot), n, offset, OP_READ_CACHED, slot | CACHED_READ_TAG);
          return;
        }
      }
    }
    this.ensureSq(1);
    if (write) {
      // Left to io_uring (inline where the filesystem can go on without blocking): forcing writes to
      // io-wq measured slower on ext4 and tmpfs alike once completions stopped costing an IPI.
      if (n === 1) this.ring.prepWrite(fd, single, len, offset, slot);
      else this.ring.prepWritev(fd, iov.slotAddress(slot), n, offset, slot);
    } else {
      const sqeFlags = large && this.placement.offloadRead(this.opsInFlight <= 1 && !(this.queue as DeviceQueue).hasAvailable()) ? IOSQE_ASYNC : 0;
      if (n === 1) this.ring.prepRead(fd, single, len, offset, slot, 0, sqeFlags);
      else this.ring.prepReadv(fd, iov.slotAddress(slot), n, offset, slot, 0, sqeFlags);
    }
  }

  /** A READ the copy helper did not read whole: read again through io_uring (still one op in flight). */
  private readFromDevice(slot: number): void {
    this.ensureSq(1);
    const s = this.slots;
    this.ring.prepReadv(this.fd, s.iov.slotAddress(slot), s.iovN[slot], s.offset[slot], slot, 0, 0);
  }

  private complete(ud: number, res: number): void {
    this.opsInFlight--;
    if (ud === SYNC_UD) {
      this.syncs.groupDone(res === -ECANCELED ? this.cancels.sync() : res);
      return;
    }
    const slot = ud & 0xffff;
    const s = this.slots;
    const pooled = this.pooled;
    if (res === -ECANCELED && (pooled === null || !pooled.owns(slot))) res = this.cancels.redo(ud, slot);
    if (pooled !== null && pooled.owns(slot)) {
      const failed = pooled.complete(slot, (ud >>> 16) & 0x3fff, res);
      if (failed === POOLED_PENDING) return;
      if (failed === 1) {
        s.status[slot] = VIRTIO_BLK_S_IOERR;
        this.warn.ioFailed(s.kind[slot], res);
      }
      this.settle(slot);
      return;
    }
    const kind = s.kind[slot];
    if (kind === KIND_FLUSH) {
      if (this.syncs.failed(res)) s.status[slot] = VIRTIO_BLK_S_IOERR;
    } else if (res < 0) {
      // DISCARD and WRITE_ZEROES fall back where a mode is refused; anything else is an I/O error.
      if (!this.ranges.refused(ud, slot, res)) {
        s.status[slot] = VIRTIO_BLK_S_IOERR;
        this.warn.ioFailed(kind, res);
      }
    } else if ((kind === KIND_RW || kind === KIND_WT_WRITE) && res !== s.expect[slot]) {
      s.status[slot] = VIRTIO_BLK_S_IOERR; // short transfer
      this.warn.ioFailed(kind, res);
    }
    if (--s.ops[slot] !== 0) return;
    this.settle(slot);
  }

  /** A request whose operations all completed: acked now, or after the next group fdatasync. */
  private settle(slot: number): void {
    if (this.slots.sync[slot] === 1 && this.slots.status[slot] === VIRTIO_BLK_S_OK) {
      this.syncs.add(slot);
      return;
    }
    this.finishSlot(slot);
  }

  private finishSlot(slot: number): void {
    const s = this.slots;
    const run = s.gateRun[slot];
    if (run !== 0) {
      s.gateRun[slot] = 0;
      (this.gate as WriteGate).leave(run);
    }
    const ok = this.writeStatus(s.statusGpa[slot], s.status[slot]);
    (this.queue as DeviceQueue).pushUsed(s.head[slot], ok ? s.usedLen[slot] : 0);
    this.completed++;
    s.release(slot);
  }
}
