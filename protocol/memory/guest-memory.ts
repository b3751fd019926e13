import { close as closeFd, closeQuiet } from '../sys/fd.js';
import { ftruncate, mapFd, memfdCreate, sealAgainstShrink, viewOf, F_SEAL_GROW, F_SEAL_SEAL, MFD_ALLOW_SEALING, MFD_CLOEXEC } from '../sys/mem.js';
import { fstat, lseek, S_IFBLK, S_IFMT, S_IFREG, SEEK_CUR, SEEK_END, SEEK_SET } from '../sys/fs.js';
import { GuestMemoryError } from './errors.js';
import { CHUNK_OVERLAP, CHUNK_SIZE, GuestRegion, type MemoryRegionSpec } from './region.js';

const PAGE = 4096;
const TWO32 = 0x1_0000_0000;

/** A host view of part of guest memory: `bytes` is zero-copy, `ptr` its host address (for iovecs). */
export interface MemorySegment {
  gpa: number;
  bytes: Uint8Array;
  ptr: bigint;
}

/** A pre-made view standing in for a mapped region (unit tests, in-process tools). */
export interface RegionView {
  guestAddr: number;
  bytes: Uint8Array;
  /** Defaults to guestAddr. */
  userAddr?: number;
  /** Host address of bytes[0], if known (e.g. addressOf(buffer)); hostPtr() refuses regions without one. */
  ptr?: bigint;
}

export interface ViewOptions {
  /** View chunk size (power of two); small values let tests exercise the >1 GiB code path. */
  chunkSize?: number;
  overlap?: number;
}

/**
 * Guest RAM as seen by the VMM or a vhost-user backend: a set of non-overlapping regions.
 * Every access is bounds-checked; a range must lie inside one region.
 */
export class GuestMemory {
  private regs: GuestRegion[] = [];
  private gen = 0;
  /** Last region hit: most accesses in a row land in the same region. */
  private last: GuestRegion | null = null;

  /**
   * Called when an access finds no region: returns true if it mapped regions meanwhile (a queue worker applying an
   * ADD_MEM_REG the front-end was already answered for), and the lookup is tried once more.
   */
  missHook: (() => boolean) | null = null;

  private constructor() {}

  get regions(): readonly GuestRegion[] {
    return this.regs;
  }

  /**
   * Bumped whenever a region is added or removed. Views taken earlier (slice()) of a removed region
   * point at unmapped memory: holders of long-lived views (queues) re-take them when this changes.
   */
  get generation(): number {
    return this.gen;
  }

  /**
   * Maps each fd MAP_SHARED. Consumes the fds: close()/removeRegion() close them, and on failure all are closed.
   * `seal: false` leaves the files' seals alone (a front-end that keeps its memory resizable).
   */
  static fromRegions(specs: MemoryRegionSpec[], opts: { seal?: boolean } = {}): GuestMemory {
    const mem = new GuestMemory();
    let i = 0;
    try {
      for (; i < specs.length; i++) mem.addMapped(specs[i], false, opts.seal ?? true);
    } catch (e) {
      mem.close();
      for (; i < specs.length; i++) if (specs[i].fd >= 0) closeQuiet(specs[i].fd);
      throw e;
    }
    return mem;
  }

  /** memfd-backed RAM (shareable with backends through region fds); userAddr is our own mapping address. */
  static anonymous(layout: { guestAddr: number; size: number }[]): GuestMemory {
    const mem = new GuestMemory();
    try {
      for (const l of layout) {
        if (!Number.isSafeInteger(l.size) || l.size <= 0) {
          throw new GuestMemoryError('invalid region size', { ...l });
        }
        const fd = memfdCreate(`kumo-guest-${l.guestAddr.toString(16)}`, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        try {
          ftruncate(fd, l.size);
          // As QEMU's memory-backend-memfd (seal=on): a back-end given this fd cannot resize it under us.
          sealAgainstShrink(fd, F_SEAL_GROW | F_SEAL_SEAL);
          mem.addMapped({ guestAddr: l.guestAddr, size: l.size, fd, fdOffset: 0, userAddr: 0 }, true);
        } catch (e) {
          closeFd(fd);
          throw e;
        }
      }
    } catch (e) {
      mem.close();
      throw e;
    }
    return mem;
  }

  /** Regions over caller-owned views (no fds, nothing to unmap). */
  static fromViews(views: RegionView[], opts: ViewOptions = {}): GuestMemory {
    const mem = new GuestMemory();
    for (const v of views) {
      const spec: MemoryRegionSpec = {
        guestAddr: v.guestAddr,
        size: v.bytes.length,
        fd: -1,
        fdOffset: 0,
        userAddr: v.userAddr ?? v.guestAddr,
      };
      const bytes = v.bytes;
      const region = new GuestRegion(
        spec,
        v.ptr ?? 0n,
        (off, len) => bytes.subarray(off, off + len),
        () => {},
        opts.chunkSize ?? CHUNK_SIZE,
        opts.overlap ?? CHUNK_OVERLAP,
      );
      mem.insert(region);
    }
    return mem;
  }

  /** vhost-user ADD_MEM_REG / SET_MEM_TABLE entry: maps spec.fd; on success the memory owns (and will close) the fd. */
  addRegion(spec: MemoryRegionSpec): void {
    this.addMapped(spec);
  }

  /** vhost-user REM_MEM_REG: unmaps and closes the matching region. */
  removeRegion(guestAddr: number, size: number, userAddr: number): void {
    const i = this.regs.findIndex((r) => r.guestAddr === guestAddr && r.size === size && r.userAddr === userAddr);
    if (i < 0) throw new GuestMemoryError('no such memory region', { guestAddr, size, userAddr });
    const [r] = this.regs.splice(i, 1);
    this.last = null;
    this.gen++;
    r.release();
  }

  /** munmap + close every fd this memory owns. */
  close(): void {
    const regs = this.regs;
    this.regs = [];
    this.last = null;
    this.gen++;
    for (const r of regs) r.release();
  }

  /** True if [gpa, gpa+len) is inside one region. */
  contains(gpa: number, len: number): boolean {
    return this.inLast(gpa, len) || this.lookup(gpa, len) !== null || (this.missHook !== null && this.missHook() && this.lookup(gpa, len) !== null);
  }

  /** The end (exclusive guest address) of the region that holds gpa, or -1 if none does. */
  regionEnd(gpa: number): number {
    const r = this.lookup(gpa, 1);
    return r === null ? -1 : r.guestAddr + r.size;
  }

  /** Throws GuestMemoryError unless [gpa, gpa+len) is inside one region. */
  check(gpa: number, len: number): void {
    this.find(gpa, len);
  }

  /** Zero-copy view of [gpa, gpa+len). Refuses ranges outside one region (and, in regions > 1 GiB, ranges
   *  longer than the view overlap that straddle a chunk boundary: use segments() or read()/write()). */
  slice(gpa: number, len: number): Uint8Array {
    const r = this.find(gpa, len);
    const v = r.viewAt(gpa - r.guestAddr, len);
    if (v === null) throw new GuestMemoryError('range crosses a view chunk; use segments()', { gpa, len });
    return v;
  }

  /**
   * The region's cached DataView that holds [gpa, gpa+len), the range starting at `viewOffset` in it; null if the range
   * crosses a view chunk. Allocates nothing (a descriptor table read for every chain).
   */
  dataView(gpa: number, len: number): DataView | null {
    const r = this.find(gpa, len);
    const dv = this.dv(r, gpa - r.guestAddr);
    return this.at + len <= dv.byteLength ? dv : null;
  }

  /** Where the range of the last dataView() call starts in the view it returned. */
  get viewOffset(): number {
    return this.at;
  }

  /** Host views of [gpa, gpa+len) piecewise (one piece unless the range straddles a 1 GiB chunk). */
  *segments(gpa: number, len: number): Generator<MemorySegment> {
    const r = this.find(gpa, len);
    for (const p of r.pieces(gpa - r.guestAddr, len)) {
      yield { gpa: r.guestAddr + p.offset, bytes: p.bytes, ptr: r.ptr === 0n ? 0n : r.ptr + BigInt(p.offset) };
    }
  }

  /** Host address of gpa, after checking [gpa, gpa+len). A region is one contiguous mapping, so the whole
   *  range is contiguous in host memory (view chunks only matter to JS views): use this for iovecs. */
  hostPtr(gpa: number, len: number): bigint {
    const r = this.find(gpa, len);
    if (r.ptr === 0n) throw new GuestMemoryError('region has no host address', { gpa, len });
    return r.ptr + BigInt(gpa - r.guestAddr);
  }

  /** Front-end user address → guest address (vhost-user ring addresses), range-checked. */
  userToGuest(uaddr: number, len: number): number {
    if (Number.isSafeInteger(uaddr) && Number.isSafeInteger(len) && uaddr >= 0 && len >= 0) {
      for (const r of this.regs) {
        const off = uaddr - r.userAddr;
        if (off >= 0 && off + len <= r.size) return r.guestAddr + off;
      }
    }
    throw new GuestMemoryError('user address range is not inside guest memory', { uaddr, len });
  }

  readU8(gpa: number): number {
    const r = this.find(gpa, 1);
    return this.dv(r, gpa - r.guestAddr).getUint8(this.at);
  }
  readU16(gpa: number): number {
    const r = this.find(gpa, 2);
    return this.dv(r, gpa - r.guestAddr).getUint16(this.at, true);
  }
  readU32(gpa: number): number {
    const r = this.find(gpa, 4);
    return this.dv(r, gpa - r.guestAddr).getUint32(this.at, true);
  }
  /** u64 as a number; throws GuestMemoryError if it is >= 2^53. */
  readU64(gpa: number): number {
    const r = this.find(gpa, 8);
    const dv = this.dv(r, gpa - r.guestAddr);
    const lo = dv.getUint32(this.at, true);
    const hi = dv.getUint32(this.at + 4, true);
    if (hi >= 0x20_0000) throw new GuestMemoryError('u64 value does not fit in a safe integer', { gpa, hi, lo });
    return hi * TWO32 + lo;
  }
  readU64Big(gpa: number): bigint {
    const r = this.find(gpa, 8);
    return this.dv(r, gpa - r.guestAddr).getBigUint64(this.at, true);
  }

  writeU8(gpa: number, v: number): void {
    const r = this.find(gpa, 1);
    this.dv(r, gpa - r.guestAddr).setUint8(this.at, v);
  }
  writeU16(gpa: number, v: number): void {
    const r = this.find(gpa, 2);
    this.dv(r, gpa - r.guestAddr).setUint16(this.at, v, true);
  }
  writeU32(gpa: number, v: number): void {
    const r = this.find(gpa, 4);
    this.dv(r, gpa - r.guestAddr).setUint32(this.at, v, true);
  }
  writeU64(gpa: number, v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new GuestMemoryError('u64 value must be a safe non-negative integer', { gpa, v });
    const r = this.find(gpa, 8);
    const dv = this.dv(r, gpa - r.guestAddr);
    dv.setUint32(this.at, v % TWO32, true);
    dv.setUint32(this.at + 4, Math.floor(v / TWO32), true);
  }
  writeU64Big(gpa: number, v: bigint): void {
    const r = this.find(gpa, 8);
    this.dv(r, gpa - r.guestAddr).setBigUint64(this.at, BigInt.asUintN(64, v), true);
  }

  /** Copies guest [gpa, gpa+dst.length) into dst (works across view chunks). */
  read(gpa: number, dst: Uint8Array): void {
    const r = this.find(gpa, dst.length);
    r.copyTo(gpa - r.guestAddr, dst);
  }

  /** Copies src into guest [gpa, gpa+src.length) (works across view chunks). */
  write(gpa: number, src: Uint8Array): void {
    const r = this.find(gpa, src.length);
    r.copyFrom(gpa - r.guestAddr, src);
  }

  /** Fills guest [gpa, gpa+len) with a byte value. */
  fill(gpa: number, len: number, value = 0): void {
    const r = this.find(gpa, len);
    for (const p of r.pieces(gpa - r.guestAddr, len)) p.bytes.fill(value);
  }

  // --- internals ---

  /** Offset inside the DataView returned by the last dv() call (avoids allocating a result pair); see viewOffset. */
  private at = 0;

  private dv(r: GuestRegion, off: number): DataView {
    if (r.chunks.length === 1) {
      this.at = off;
      return r.dataViews[0];
    }
    const ci = Math.floor(off / r.chunkSize);
    this.at = off - ci * r.chunkSize;
    return r.dataViews[ci];
  }

  /** Whether [gpa, gpa+len) is inside the region the last lookup found (most accesses are). */
  private inLast(gpa: number, len: number): boolean {
    const l = this.last;
    if (l === null) return false;
    const off = gpa - l.guestAddr;
    return off >= 0 && len >= 0 && off + len <= l.size && Number.isSafeInteger(gpa) && Number.isSafeInteger(len);
  }

  private find(gpa: number, len: number): GuestRegion {
    if (this.inLast(gpa, len)) return this.last as GuestRegion;
    let r = this.lookup(gpa, len);
    if (r === null && this.missHook !== null && this.missHook()) r = this.lookup(gpa, len);
    if (r === null) throw new GuestMemoryError('guest address range is not inside one memory region', { gpa, len });
    this.last = r;
    return r;
  }

  private lookup(gpa: number, len: number): GuestRegion | null {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) return null;
    for (const r of this.regs) {
      const off = gpa - r.guestAddr;
      if (off >= 0 && off + len <= r.size) return r;
    }
    return null;
  }

  /** ownUserAddr: the region's user address is our own mapping address (anonymous memory); seal: see fromRegions. */
  private addMapped(spec: MemoryRegionSpec, ownUserAddr = false, seal = true): void {
    // mmap needs a page-aligned file offset: map from the page below and skip the difference.
    const delta = spec.fdOffset % PAGE;
    this.checkNoOverlap(spec, !ownUserAddr);
    // Pages of a mapping past the end of its file raise SIGBUS when touched, which would kill the process: a
    // front-end's memfd is sealed against shrinking where it allows seals, before its size is checked.
    const sealed = seal && sealAgainstShrink(spec.fd);
    const st = fstat(spec.fd);
    const type = st.mode & S_IFMT;
    // Only files whose size can be known are mapped: a device mapped past its end would SIGBUS as well.
    if (type !== S_IFREG && type !== S_IFBLK) {
      throw new GuestMemoryError('memory region fd is neither a regular file (memfd, tmpfs, hugetlbfs) nor a block device', { mode: st.mode.toString(8) });
    }
    const fileSize = type === S_IFREG ? st.size : deviceSize(spec.fd);
    if (fileSize < spec.fdOffset + spec.size) {
      throw new GuestMemoryError('memory region extends past the end of its file', { fdOffset: spec.fdOffset, size: spec.size, fileSize });
    }
    const mapping = mapFd(spec.fd, spec.size + delta, spec.fdOffset - delta);
    const base = mapping.ptr + BigInt(delta);
    const full: MemoryRegionSpec = ownUserAddr ? { ...spec, userAddr: Number(base) } : spec;
    // On failure the fd stays the caller's: only a region that was added owns (and later closes) it.
    try {
      const region = new GuestRegion(full, base, (off, len) => viewOf(base + BigInt(off), len), () => {
        mapping.unmap();
        closeFd(spec.fd);
      });
      region.shrinkable = !sealed && (st.mode & S_IFMT) === S_IFREG;
      this.insert(region);
    } catch (e) {
      mapping.unmap();
      throw e;
    }
  }

  private checkNoOverlap(s: MemoryRegionSpec, checkUser = true): void {
    for (const r of this.regs) {
      if (s.guestAddr < r.guestAddr + r.size && r.guestAddr < s.guestAddr + s.size) {
        throw new GuestMemoryError('memory regions overlap', { guestAddr: s.guestAddr, size: s.size, other: r.guestAddr, otherSize: r.size });
      }
      if (checkUser && s.userAddr < r.userAddr + r.size && r.userAddr < s.userAddr + s.size) {
        throw new GuestMemoryError('memory regions overlap in user address space', { userAddr: s.userAddr, size: s.size, other: r.userAddr });
      }
    }
  }

  private insert(region: GuestRegion): void {
    this.checkNoOverlap(region);
    this.regs.push(region);
    this.gen++;
    this.regs.sort((a, b) => a.guestAddr - b.guestAddr);
  }
}

/**
 * The size of a file a memory region may be mapped from, or null if it is neither a regular file nor a block device
 * (see addMapped).
 */
export function mappableFileSize(fd: number): number | null {
  const st = fstat(fd);
  const type = st.mode & S_IFMT;
  if (type === S_IFREG) return Number(st.size);
  return type === S_IFBLK ? deviceSize(fd) : null;
}

/**
 * A block device's size by lseek (the request thread's seccomp filter has no ioctl): the offset of the front-end's
 * file description is put back where it was.
 */
function deviceSize(fd: number): number {
  const at = lseek(fd, 0n, SEEK_CUR);
  try {
    return Number(lseek(fd, 0n, SEEK_END));
  } finally {
    lseek(fd, at, SEEK_SET);
  }
}
