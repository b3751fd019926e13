import { availableParallelism } from 'node:os';
import type { GuestMemory } from '../../protocol/memory/index.js';
import type { VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { closeQuiet, dupCloexecRaw, eventfd, IoVecList, preadvRaw } from '../../protocol/sys/fd.js';
import { syncRaw } from '../../protocol/sys/fs.js';
import { ECANCELED, IoUring, IORING_FSYNC_DATASYNC, IOSQE_ASYNC } from '../../protocol/sys/uring.js';
import { CopySpread } from '../../protocol/sys/copy-spread.js';
import type { Logger } from '../../protocol/log.js';
import { DeferredReplies, type Deferrer } from './deferred.js';

/** READs at least this large may be copied by an io-wq thread while the request loop goes on. */
export const OFFLOAD_MIN_BYTES = 128 * 1024;
/** A lone READ at least this large is split in two halves copied at once (see readSplit). */
export const SPLIT_MIN_BYTES = 256 * 1024;
/** How long the request loop spins for the io-wq half before sleeping in io_uring_enter. */
const SPLIT_SPIN_NS = 300_000n;
const PAGE = 4096;
const SLOTS = 16;

/**
 * Large READs are one long copy from the page cache into guest memory, done by whichever thread
 * runs them. With CPUs to spare, large READs go to io-wq workers (io_uring with IOSQE_ASYNC) while
 * the request loop copies one in every `share` itself (CopySpread), so that many CPUs copy at once; the
 * reply header is written and the chain returned when the completion arrives. Replies may thus
 * overtake each other, which FUSE allows (they carry the request's unique).
 *
 * io_uring looks a forced-async request's fd up only when an io-wq worker picks it up, by number: a
 * RELEASE (and an OPEN that gets the number) before then would make the READ read another file. So
 * each offloaded READ runs on an fd of its own, a duplicate closed on completion. A split READ needs
 * none: this thread waits for its half before taking another request. Guest memory changes and ring
 * stops wait in drain().
 *
 * FSYNCs on a file system that writes to a device go to io-wq as well, each on an fd of its own: a sync that
 * waits for a disk would otherwise hold up every other request of every guest process behind it.
 */
export class IoOffload implements Deferrer {
  private readonly ring: IoUring;
  /** Signalled by the ring on every completion; the worker sleeps on it in its epoll. */
  readonly efd: number;
  private readonly iovs: IoVecList[] = [];
  private readonly free: number[] = [];
  private readonly hdrGpa = new Float64Array(SLOTS);
  private readonly unique = new Uint32Array(SLOTS * 2);
  private readonly heads = new Uint16Array(SLOTS);
  /** The slot's own duplicate of the READ's fd (see the class comment). */
  private readonly fds = new Int32Array(SLOTS);
  /** 1 for a slot that carries an FSYNC, 2 for an fdatasync. */
  private readonly isSync = new Uint8Array(SLOTS);
  /** The READ's file offset (fast-path READs: below 2^53), to run it here if io_uring cancels it. */
  private readonly offsets = new Float64Array(SLOTS);
  private cancelNoted = false;
  private syncs = 0;
  private readonly owners: (VringHandle | null)[] = new Array<VringHandle | null>(SLOTS).fill(null);
  private readonly replies = new DeferredReplies();
  private readonly spread: CopySpread;
  private last = -1;
  private inFlight = 0;
  private mem: GuestMemory | null = null;
  private readonly headIov: IoVecList;
  /** The slot of the split READ's second half while it is out, else -1; its result lands in splitRes. */
  private splitSlot = -1;
  private splitRes = 0;
  private readonly onCqe = (slot: number, res: number): void => this.finish(slot, res);

  private constructor(maxIovecs: number, copiers: number, private readonly workers: number, private readonly log?: Logger) {
    // This thread and the io-wq workers: with --thread-pool-size=1 every other READ, whatever the CPU count.
    this.spread = new CopySpread(copiers);
    this.ring = new IoUring(SLOTS * 2, { coopTaskrun: true });
    this.efd = eventfd();
    this.ring.registerEventfd(this.efd);
    this.headIov = new IoVecList(maxIovecs);
    for (let s = 0; s < SLOTS; s++) {
      this.iovs.push(new IoVecList(maxIovecs));
      this.free.push(s);
    }
  }

  /**
   * An offload, or null on a single-CPU host or where io_uring is unavailable (READs and FSYNCs then stay
   * inline). `maxWorkers` > 0 caps the io-wq threads (--thread-pool-size); `cpus`: the host's.
   */
  static create(maxIovecs: number, maxWorkers: number, log?: Logger, cpus = availableParallelism()): IoOffload | null {
    if (cpus < 2) return null;
    // Default: one io-wq worker per CPU beside the queue thread, which copies too. The offload exists to copy
    // cached data on another CPU, and the kernel's own cap (4 per CPU) only let more copiers contend: 1 MiB
    // reads at depth 8 on 2 CPUs ran at 5.3-6.4 GB/s with it and 6.7-9.0 GB/s with one worker. Cold data
    // on a slow device waits in that worker, so fewer offloaded READs overlap there; --thread-pool-size=N
    // raises the cap.
    const cap = maxWorkers > 0 ? maxWorkers : cpus - 1;
    let o: IoOffload;
    try {
      o = new IoOffload(maxIovecs, Math.min(cpus, cap + 1), cap, log);
    } catch (e) {
      log?.info({ err: (e as Error).message }, 'io_uring unavailable: large READs and FSYNCs run inline');
      return null;
    }
    try {
      o.ring.setMaxWorkers(cap, cap);
    } catch {
      // Kernels before 5.15 lack IORING_REGISTER_IOWQ_MAX_WORKERS: they keep their own cap, the offload still helps.
    }
    return o;
  }

  /** io-wq thread caps of the ring: [bounded (file I/O), unbounded]. */
  workerCaps(): [number, number] {
    return this.ring.maxWorkers();
  }

  /**
   * Set by the request loop before each request: more requests are waiting. A lone READ gains
   * nothing from a second thread (nothing to copy beside it) and would pay the io-wq wakeup.
   */
  moreQueued = false;

  /**
   * Whether a READ of `len` bytes should go to io-wq: a large one with work beside it and a slot free, spread
   * over the CPUs with this thread copying one in every `share` (CopySpread: every other one on 2 CPUs).
   */
  wants(len: number): boolean {
    // Syncs waiting for a device in every worker would make the READ wait behind them: copy it here.
    if (len < OFFLOAD_MIN_BYTES || this.free.length === 0 || this.syncs >= this.workers) return false;
    if (!this.moreQueued && this.inFlight === 0) return false;
    return this.spread.next(1);
  }

  /**
   * Whether a READ of `len` bytes at `offset` should be split: a large one arriving alone (nothing queued or in
   * flight), where the second half's offset is still exact as a number (a sum past 2^53 rounds).
   */
  wantsSplit(len: number, offset: number): boolean {
    return len >= SPLIT_MIN_BYTES && !this.moreQueued && this.inFlight === 0 && this.free.length > 0
      && offset + len <= Number.MAX_SAFE_INTEGER;
  }

  /**
   * preadv(fd, iov, offset) by two threads: an io-wq worker copies the second half while this thread
   * copies the first, then waits for it. A lone large READ is one long copy with the other CPU idle,
   * so this nearly halves its latency. Returns bytes read or -errno, as preadv would: a short or
   * failed first half ends the read there, and a failed second half has the whole read run again here (its answer,
   * an error included, is preadv's).
   */
  readSplit(fd: number, iov: IoVecList, offset: number): number {
    const half = Math.floor(iov.totalLength / 2 / PAGE) * PAGE;
    const s = this.free.pop() as number;
    const tail = this.iovs[s];
    iov.splitInto(half, this.headIov, tail);
    this.splitSlot = s;
    this.ring.prepReadv(fd, Number(tail.ptr), tail.count, offset + half, s, 0, IOSQE_ASYNC);
    this.ring.submit(0);
    this.inFlight++;
    const first = preadvRaw(fd, Number(this.headIov.ptr), this.headIov.count, offset);
    this.awaitSplit();
    const second = this.splitRes;
    this.free.push(s);
    if (first < half) return first;
    // The second half failed: the whole read again here, so that the answer is preadv's. An error that covers the
    // whole request (EINVAL for an O_DIRECT length off the block) is an error, not a short read of the first half.
    return second < 0 ? preadvRaw(fd, Number(iov.ptr), iov.count, offset) : half + second;
  }

  private awaitSplit(): void {
    const until = process.hrtime.bigint() + SPLIT_SPIN_NS;
    while (this.splitSlot >= 0) {
      if (this.ring.cqReady() === 0 && process.hrtime.bigint() > until) this.ring.submit(1);
      this.ring.reap(this.onCqe);
    }
  }

  /**
   * Starts preadv(fd, iov, offset) on an io-wq worker; the reply header (unique lo/hi) goes to guest
   * address hdrGpa on completion. The caller then bind()s the chain and treats the request as DEFERRED.
   * False, and nothing started, when fd cannot be duplicated (out of fds): the caller reads inline.
   */
  submit(fd: number, iov: IoVecList, offset: number, hdrGpa: number, uniqueLo: number, uniqueHi: number): boolean {
    const own = dupCloexecRaw(fd);
    if (own < 0) return false;
    const s = this.take(own, hdrGpa, uniqueLo, uniqueHi);
    const list = this.iovs[s];
    list.buf.set(iov.buf.subarray(0, iov.count * 16));
    list.count = iov.count;
    list.totalLength = iov.totalLength;
    this.offsets[s] = offset;
    this.ring.prepReadv(own, Number(list.ptr), list.count, offset, s, 0, IOSQE_ASYNC);
    this.ring.submit(0);
    return true;
  }

  /** Whether submitFsync() can take a sync now. */
  canSync(): boolean {
    return this.free.length > 0;
  }

  /**
   * Starts fsync(fd), fdatasync with `datasync`, on an io-wq worker, taking `fd` (closed on completion); the reply
   * header goes to hdrGpa as for submit(), and the caller bind()s the chain. Only when canSync().
   */
  submitFsync(fd: number, datasync: boolean, hdrGpa: number, uniqueLo: number, uniqueHi: number): void {
    const s = this.take(fd, hdrGpa, uniqueLo, uniqueHi);
    this.isSync[s] = datasync ? 2 : 1;
    this.syncs++;
    this.ring.prepFsync(fd, s, datasync ? IORING_FSYNC_DATASYNC : 0);
    this.ring.submit(0);
  }

  /** Runs slot s's READ or FSYNC here, which io_uring cancelled without running; its result. */
  private redo(s: number): number {
    if (!this.cancelNoted) {
      this.cancelNoted = true;
      this.log?.warn('io_uring could not start a worker thread (a pids or RLIMIT_NPROC limit?): READs and FSYNCs it cancels run on the request thread');
    }
    const fd = this.fds[s];
    if (this.isSync[s] !== 0) return syncRaw(fd, this.isSync[s] === 1);
    const list = this.iovs[s];
    return preadvRaw(fd, Number(list.ptr), list.count, this.offsets[s]);
  }

  /** A free slot for a request on `fd` (the slot's own) whose reply header goes to hdrGpa; it becomes `last`. */
  private take(fd: number, hdrGpa: number, uniqueLo: number, uniqueHi: number): number {
    const s = this.free.pop() as number;
    this.fds[s] = fd;
    this.hdrGpa[s] = hdrGpa;
    this.unique[2 * s] = uniqueLo;
    this.unique[2 * s + 1] = uniqueHi;
    this.owners[s] = null;
    this.last = s;
    this.inFlight++;
    return s;
  }

  /** The chain (ring, head) of the READ or FSYNC just started. */
  bind(owner: VringHandle, head: number): void {
    this.owners[this.last] = owner;
    this.heads[this.last] = head;
  }

  get pending(): number {
    return this.inFlight;
  }

  ready(): boolean {
    return this.inFlight > 0 && this.ring.cqReady() > 0;
  }

  /** Completes every finished READ: header, used element, one publish and notify per ring. Returns how many. */
  reap(mem: GuestMemory): number {
    if (this.inFlight === 0) return 0;
    this.mem = mem;
    const n = this.ring.reap(this.onCqe);
    this.replies.publish();
    return n;
  }

  /** Blocks until no READ or FSYNC is in flight, completing each (guest memory about to change, ring stopping). */
  drain(mem: GuestMemory): void {
    while (this.inFlight > 0) {
      if (this.ring.cqReady() === 0) this.ring.submit(1);
      this.reap(mem);
    }
  }

  close(): void {
    this.ring.close();
    closeQuiet(this.efd);
  }

  private finish(s: number, res: number): void {
    this.inFlight--;
    if (s === this.splitSlot) {
      this.splitSlot = -1;
      this.splitRes = res;
      return;
    }
    // Cancelled without running (io-wq could not start a worker thread, at a pids or RLIMIT_NPROC limit): run here.
    // A split READ's second half needs nothing: its failure already has the whole READ run again.
    if (res === -ECANCELED) res = this.redo(s);
    closeQuiet(this.fds[s]);
    if (this.isSync[s] !== 0) {
      this.isSync[s] = 0;
      this.syncs--;
    }
    this.free.push(s);
    const owner = this.owners[s];
    this.owners[s] = null;
    if (owner === null) return;
    this.replies.complete(this.mem as GuestMemory, owner, this.heads[s], this.hdrGpa[s], this.unique[2 * s], this.unique[2 * s + 1], res);
  }
}
