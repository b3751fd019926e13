import { libc, koffi, SysError, type PtrArg } from './libc.js';
import { mapAnonymous, mapFd, MAP_POPULATE, MAP_SHARED, type Mapping } from './mem.js';
import { closeQuiet } from './fd.js';

/**
 * io_uring through the raw syscalls (425 setup, 426 enter, 427 register) and the shared rings.
 * Hot-path rules: no BigInt, no allocation per request. Pointers and offsets are JS numbers
 * (user-space addresses and file offsets are < 2^53) written as two u32 halves.
 */

const SYS_io_uring_setup = 425;
const SYS_io_uring_enter = 426;
const SYS_io_uring_register = 427;

export const IORING_OP_NOP = 0;
export const IORING_OP_READV = 1;
export const IORING_OP_WRITEV = 2;
export const IORING_OP_FSYNC = 3;
export const IORING_OP_FALLOCATE = 17;
export const IORING_OP_READ = 22;
export const IORING_OP_WRITE = 23;

export const IORING_FSYNC_DATASYNC = 1;
/** SQE flags: the next SQE starts only after this one completed (and is cancelled if this one fails). */
export const IOSQE_IO_LINK = 1 << 2;
/** Always run the request from an io-wq worker thread instead of trying it inline first. */
export const IOSQE_ASYNC = 1 << 4;
/** preadv2/pwritev2 flags, usable as rw_flags. */
export const RWF_HIPRI = 1;
export const RWF_DSYNC = 2;
export const RWF_SYNC = 4;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export const IORING_SETUP_CQSIZE = 1 << 3;
export const IORING_SETUP_CLAMP = 1 << 4;
export const IORING_SETUP_SUBMIT_ALL = 1 << 7;
export const IORING_SETUP_COOP_TASKRUN = 1 << 8;
export const IORING_SETUP_TASKRUN_FLAG = 1 << 9;
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12;

const IORING_ENTER_GETEVENTS = 1;
// sq_flags bits (bit 0 is NEED_WAKEUP, for SQPOLL). Completions that did not fit the CQ ring are kept on a kernel
// list until an enter with GETEVENTS moves them in.
const IORING_SQ_CQ_OVERFLOW = 1 << 1;
const IORING_SQ_TASKRUN = 1 << 2;
const EINVAL = 22;
const EPERM = 1;
const ENOSYS = 38;
const ENOMEM = 12;
/** The result (negated) of an operation io_uring cancelled: a link before it failed, or io-wq could not run it. */
export const ECANCELED = 125;
const IORING_FEAT_SINGLE_MMAP = 1 << 0;
const IORING_OFF_SQ_RING = 0;
const IORING_OFF_CQ_RING = 0x8000000;
const IORING_OFF_SQES = 0x10000000;
const IORING_REGISTER_EVENTFD = 4;
const IORING_UNREGISTER_EVENTFD = 5;
const IORING_REGISTER_EVENTFD_ASYNC = 7;
const IORING_REGISTER_IOWQ_MAX_WORKERS = 19;

const SQE_SIZE = 64;
const CQE_SIZE = 16;
const PARAMS_SIZE = 120;
const TWO32 = 0x1_0000_0000;
const EINTR = 4;
const EAGAIN = 11;
const EBUSY = 16;

const setup_ = libc.func('syscall', 'int', ['long', 'uint', 'void *']);
const enter_ = libc.func('syscall', 'int', ['long', 'int', 'uint', 'uint', 'uint', 'void *', 'size_t']);
const register_ = libc.func('syscall', 'int', ['long', 'int', 'uint', 'void *', 'uint']);

export class IoUringError extends SysError {}

/**
 * Why this process cannot have an io_uring, in words a user can act on, for an error of `new IoUring`; null when
 * the error is not one of those (a bug, or a kernel without io_uring at all gives ENOSYS too).
 */
export function ringRefusal(e: unknown): string | null {
  if (!(e instanceof IoUringError) || e.call !== 'io_uring_setup') return null;
  if (e.errno === EPERM || e.errno === ENOSYS) {
    return `io_uring_setup was refused (${e.code}): kernel.io_uring_disabled is set, or a seccomp profile refuses io_uring ` +
      "(Docker's and containerd's defaults do); allow io_uring_setup, io_uring_enter and io_uring_register";
  }
  if (e.errno === ENOMEM) {
    return 'io_uring_setup: ENOMEM: io_uring rings count against RLIMIT_MEMLOCK (ulimit -l) in a process without CAP_IPC_LOCK: ' +
      'raise that limit, or use a smaller queue_size';
  }
  return null;
}

export interface IoUringOptions {
  /** CQ size; defaults to 2 × SQ entries. */
  cqEntries?: number;
  /** Extra IORING_SETUP_* flags (CQSIZE/CLAMP/SUBMIT_ALL are always set). */
  flags?: number;
  /**
   * COOP_TASKRUN + TASKRUN_FLAG where the kernel has them (5.19+): an io-wq completion no longer
   * interrupts this thread with an IPI; it is posted when the thread next enters the kernel, which
   * cqReady() and reap() do themselves when the kernel flags work as pending.
   */
  coopTaskrun?: boolean;
}

/** Callback for each completion: user data (u32) and result (bytes, or -errno). */
export type CompletionHandler = (userData: number, res: number) => void;

/** One io_uring instance: prep SQEs, submit them in one enter, reap CQEs. Not thread-safe. */
export class IoUring {
  readonly fd: number;
  readonly sqEntries: number;
  readonly cqEntries: number;
  readonly features: number;

  private readonly maps: Mapping[] = [];
  // SQ ring
  private readonly sqHeadIdx: number;
  private readonly sqTailIdx: number;
  private readonly sqFlagsIdx: number;
  /** Whether COOP_TASKRUN was asked for and granted. */
  readonly coopTaskrun: boolean;
  private readonly sqMask: number;
  private readonly sqRing: Uint32Array;
  private readonly sqeU32: Uint32Array;
  /** Our not-yet-published tail (SQEs prepared since the last submit sit between the kernel tail and this). */
  private sqTail: number;
  // CQ ring
  private readonly cqRing: Uint32Array;
  private readonly cqHeadIdx: number;
  private readonly cqTailIdx: number;
  private readonly cqMask: number;
  private readonly cqeU32: Uint32Array;
  private readonly cqeI32: Int32Array;
  private readonly efdBuf = new Int32Array(1);
  private closed = false;

  constructor(entries: number, opts: IoUringOptions = {}) {
    if (!Number.isInteger(entries) || entries < 1 || entries > 32768) {
      throw new RangeError(`io_uring entries must be 1..32768, got ${entries}`);
    }
    const params = Buffer.alloc(PARAMS_SIZE);
    let flags = IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL | (opts.flags ?? 0);
    if (opts.cqEntries !== undefined) flags |= IORING_SETUP_CQSIZE;
    const setup = (f: number): number => {
      params.fill(0);
      if (opts.cqEntries !== undefined) params.writeUInt32LE(opts.cqEntries, 4);
      params.writeUInt32LE(f >>> 0, 8);
      return setup_(SYS_io_uring_setup, entries, params) as number;
    };
    const wantCoop = opts.coopTaskrun === true;
    let fd = setup(wantCoop ? flags | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG : flags);
    this.coopTaskrun = wantCoop && fd >= 0;
    // Older kernels refuse the flags they do not know: COOP_TASKRUN came in 5.19, SUBMIT_ALL in 5.18 (submit() counts
    // what the kernel has not consumed, so an SQE it stopped at goes in with the next submit).
    if (fd < 0 && wantCoop && koffi.errno() === EINVAL) fd = setup(flags);
    if (fd < 0 && koffi.errno() === EINVAL) {
      flags &= ~IORING_SETUP_SUBMIT_ALL;
      fd = setup(flags);
    }
    if (fd < 0) throw new IoUringError('io_uring_setup', koffi.errno(), { entries, flags });
    this.fd = fd;
    try {
      this.sqEntries = params.readUInt32LE(0);
      this.cqEntries = params.readUInt32LE(4);
      this.features = params.readUInt32LE(20);
      const sq = (o: number) => params.readUInt32LE(40 + o);
      const cq = (o: number) => params.readUInt32LE(80 + o);
      const sqSize = sq(24) + this.sqEntries * 4;
      const cqSize = cq(20) + this.cqEntries * CQE_SIZE;
      let sqMap: Mapping;
      let cqMap: Mapping;
      if (this.features & IORING_FEAT_SINGLE_MMAP) {
        sqMap = cqMap = this.map(Math.max(sqSize, cqSize), IORING_OFF_SQ_RING);
      } else {
        sqMap = this.map(sqSize, IORING_OFF_SQ_RING);
        cqMap = this.map(cqSize, IORING_OFF_CQ_RING);
      }
      const sqeMap = this.map(this.sqEntries * SQE_SIZE, IORING_OFF_SQES);

      this.sqRing = new Uint32Array(sqMap.bytes.buffer, sqMap.bytes.byteOffset, sqMap.size >>> 2);
      this.sqHeadIdx = sq(0) >>> 2;
      this.sqTailIdx = sq(4) >>> 2;
      this.sqFlagsIdx = sq(16) >>> 2;
      this.sqMask = this.sqRing[sq(8) >>> 2];
      // The SQ index array never changes: slot i always names SQE i.
      const arrayIdx = sq(24) >>> 2;
      for (let i = 0; i < this.sqEntries; i++) this.sqRing[arrayIdx + i] = i;
      this.sqTail = this.sqRing[this.sqTailIdx];
      const sb = sqeMap.bytes;
      this.sqeU32 = new Uint32Array(sb.buffer, sb.byteOffset, sb.byteLength >>> 2);

      this.cqRing = new Uint32Array(cqMap.bytes.buffer, cqMap.bytes.byteOffset, cqMap.size >>> 2);
      this.cqHeadIdx = cq(0) >>> 2;
      this.cqTailIdx = cq(4) >>> 2;
      this.cqMask = this.cqRing[cq(8) >>> 2];
      const cqesOff = cq(20);
      this.cqeU32 = new Uint32Array(cqMap.bytes.buffer, cqMap.bytes.byteOffset + cqesOff, this.cqEntries * 4);
      this.cqeI32 = new Int32Array(cqMap.bytes.buffer, cqMap.bytes.byteOffset + cqesOff, this.cqEntries * 4);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  private map(size: number, offset: number): Mapping {
    const m = mapFd(this.fd, size, offset, { flags: MAP_SHARED | MAP_POPULATE });
    this.maps.push(m);
    return m;
  }

  /** Free SQ slots left for prep*() before a submit is needed. */
  sqSpace(): number {
    return this.sqEntries - ((this.sqTail - Atomics.load(this.sqRing, this.sqHeadIdx)) >>> 0);
  }

  /** SQEs prepared and not yet taken by the kernel (unpublished, or left by a submit it stopped short: see submit()). */
  get pending(): number {
    return (this.sqTail - Atomics.load(this.sqRing, this.sqHeadIdx)) >>> 0;
  }

  /** Fills the next SQE; returns false when the SQ is full (submit, then retry). */
  private prep(opcode: number, fd: number, addr: number, len: number, off: number, opFlags: number, userData: number, sqeFlags = 0): boolean {
    if (this.sqSpace() === 0) return false;
    const i = this.sqTail & this.sqMask;
    const w = i * 16; // index in u32 words
    const u32 = this.sqeU32;
    u32[w] = opcode | (sqeFlags << 8); // opcode u8, flags u8, ioprio u16 = 0
    u32[w + 1] = fd;
    u32[w + 2] = off % TWO32;
    u32[w + 3] = (off / TWO32) >>> 0;
    u32[w + 4] = addr % TWO32;
    u32[w + 5] = (addr / TWO32) >>> 0;
    u32[w + 6] = len;
    u32[w + 7] = opFlags;
    u32[w + 8] = userData;
    u32[w + 9] = 0;
    u32[w + 10] = 0; // buf_index, personality
    u32[w + 11] = 0;
    u32[w + 12] = 0;
    u32[w + 13] = 0;
    u32[w + 14] = 0;
    u32[w + 15] = 0;
    this.sqTail = (this.sqTail + 1) >>> 0;
    return true;
  }

  prepReadv(fd: number, iovAddr: number, iovCount: number, offset: number, userData: number, rwFlags = 0, sqeFlags = 0): boolean {
    return this.prep(IORING_OP_READV, fd, iovAddr, iovCount, offset, rwFlags, userData, sqeFlags);
  }
  prepWritev(fd: number, iovAddr: number, iovCount: number, offset: number, userData: number, rwFlags = 0, sqeFlags = 0): boolean {
    return this.prep(IORING_OP_WRITEV, fd, iovAddr, iovCount, offset, rwFlags, userData, sqeFlags);
  }
  prepRead(fd: number, bufAddr: number, len: number, offset: number, userData: number, rwFlags = 0, sqeFlags = 0): boolean {
    return this.prep(IORING_OP_READ, fd, bufAddr, len, offset, rwFlags, userData, sqeFlags);
  }
  prepWrite(fd: number, bufAddr: number, len: number, offset: number, userData: number, rwFlags = 0, sqeFlags = 0): boolean {
    return this.prep(IORING_OP_WRITE, fd, bufAddr, len, offset, rwFlags, userData, sqeFlags);
  }
  /** Whole-file fsync (or fdatasync with IORING_FSYNC_DATASYNC). */
  prepFsync(fd: number, userData: number, fsyncFlags = 0): boolean {
    return this.prep(IORING_OP_FSYNC, fd, 0, 0, 0, fsyncFlags, userData);
  }
  /** fallocate(fd, mode, offset, len): io_uring carries len in addr and mode in len. */
  prepFallocate(fd: number, mode: number, offset: number, len: number, userData: number, sqeFlags = 0): boolean {
    return this.prep(IORING_OP_FALLOCATE, fd, len, mode, offset, 0, userData, sqeFlags);
  }
  prepNop(userData: number): boolean {
    return this.prep(IORING_OP_NOP, -1, 0, 0, 0, 0, userData);
  }

  /**
   * Publishes prepared SQEs and enters the kernel once. waitFor > 0 also blocks until that many
   * completions are ready. Returns how many SQEs the kernel consumed.
   */
  submit(waitFor = 0): number {
    Atomics.store(this.sqRing, this.sqTailIdx, this.sqTail);
    // Everything the kernel has not consumed: without SUBMIT_ALL it stops at an SQE it cannot issue, leaving the rest.
    const toSubmit = this.pending;
    if (toSubmit === 0 && waitFor === 0) return 0;
    for (;;) {
      const flags = waitFor > 0 ? IORING_ENTER_GETEVENTS : 0;
      const r = enter_(SYS_io_uring_enter, this.fd, toSubmit, waitFor, flags, null, 0) as number;
      if (r >= 0) return r;
      const e = koffi.errno();
      if (e === EINTR) continue;
      // CQ overflow backpressure: the caller reaps and submits again.
      if (e === EAGAIN || e === EBUSY) return 0;
      throw new IoUringError('io_uring_enter', e, { toSubmit, waitFor });
    }
  }

  /**
   * Completions the kernel holds back until this thread enters it: task work (COOP_TASKRUN), or CQEs that overflowed
   * the CQ ring (one request may post many: a 32-range DISCARD); those signal no eventfd until they are moved in.
   */
  private kernelHolds(): boolean {
    const f = Atomics.load(this.sqRing, this.sqFlagsIdx);
    return (f & IORING_SQ_CQ_OVERFLOW) !== 0 || (this.coopTaskrun && (f & IORING_SQ_TASKRUN) !== 0);
  }

  /** Enters the kernel so that pending task work posts its completions. */
  private runTaskWork(): void {
    enter_(SYS_io_uring_enter, this.fd, 0, 0, IORING_ENTER_GETEVENTS, null, 0);
  }

  /** Completions ready to reap. */
  cqReady(): number {
    if (this.kernelHolds()) this.runTaskWork();
    return (Atomics.load(this.cqRing, this.cqTailIdx) - this.cqRing[this.cqHeadIdx]) >>> 0;
  }

  /**
   * Calls fn for every ready CQE (u32 user data, i32 result) and frees them; returns the count. Overflowed CQEs are
   * moved in and reaped too: left on the kernel's list they would wait for the next unrelated wakeup, or forever.
   */
  reap(fn: CompletionHandler): number {
    let n = 0;
    for (;;) {
      if (this.kernelHolds()) this.runTaskWork();
      if (this.cqRing[this.cqHeadIdx] === Atomics.load(this.cqRing, this.cqTailIdx)) return n;
      // Each CQE is consumed before its handler runs, and head is read again after: a handler may prep
      // and submit more work, and reap again while it waits for room, without a CQE being seen twice.
      for (;;) {
        const head = this.cqRing[this.cqHeadIdx];
        if (head === Atomics.load(this.cqRing, this.cqTailIdx)) break;
        const w = (head & this.cqMask) * 4;
        const ud = this.cqeU32[w];
        const res = this.cqeI32[w + 2];
        Atomics.store(this.cqRing, this.cqHeadIdx, (head + 1) >>> 0);
        fn(ud, res);
        n++;
      }
    }
  }

  /**
   * The ring signals efd when it posts a completion. asyncOnly: only for completions that did not
   * finish inline during submit (those the submitter reaps right away anyway), saving a wakeup.
   */
  registerEventfd(efd: number, asyncOnly = false): void {
    this.efdBuf[0] = efd;
    this.register(asyncOnly ? IORING_REGISTER_EVENTFD_ASYNC : IORING_REGISTER_EVENTFD, this.efdBuf, 1, { efd });
  }

  unregisterEventfd(): void {
    this.register(IORING_UNREGISTER_EVENTFD, null, 0, {});
  }

  /** Caps this ring's io-wq threads (bounded: regular-file I/O; unbounded: sockets...); 0 leaves one as it is. */
  setMaxWorkers(bounded: number, unbounded: number): void {
    this.register(IORING_REGISTER_IOWQ_MAX_WORKERS, new Uint32Array([bounded, unbounded]), 2, { bounded, unbounded });
  }

  /** The io-wq thread caps now in force: [bounded, unbounded]. */
  maxWorkers(): [number, number] {
    const v = new Uint32Array(2);
    this.register(IORING_REGISTER_IOWQ_MAX_WORKERS, v, 2, {});
    return [v[0], v[1]];
  }

  private register(op: number, arg: PtrArg, nr: number, ctx: Record<string, unknown>): void {
    const r = register_(SYS_io_uring_register, this.fd, op, arg, nr) as number;
    if (r < 0) throw new IoUringError('io_uring_register', koffi.errno(), { op, ...ctx });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const m of this.maps) m.unmap();
    this.maps.length = 0;
    closeQuiet(this.fd);
  }
}

/**
 * Native iovec storage (struct iovec[]) addressed by slot: the kernel reads it at submit time, so
 * each in-flight request keeps its own slot. Entries are written as u32 halves (no BigInt).
 */
export class IoVecArena {
  readonly address: number;
  private readonly u32: Uint32Array;
  private readonly mapping: Mapping;

  constructor(readonly slots: number, readonly perSlot: number) {
    this.mapping = mapAnonymous(Math.max(4096, slots * perSlot * 16));
    this.address = Number(this.mapping.ptr);
    const b = this.mapping.bytes;
    this.u32 = new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
  }

  free(): void {
    this.mapping.unmap();
  }

  /** Host address of slot's first iovec. */
  slotAddress(slot: number): number {
    return this.address + slot * this.perSlot * 16;
  }

  /** Sets iovec #i of a slot. */
  set(slot: number, i: number, base: number, len: number): void {
    const w = (slot * this.perSlot + i) * 4;
    this.u32[w] = base % TWO32;
    this.u32[w + 1] = (base / TWO32) >>> 0;
    this.u32[w + 2] = len;
    this.u32[w + 3] = 0;
  }
}
