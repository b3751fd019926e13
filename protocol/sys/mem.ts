import { libc, koffi, check, SysError, type PtrArg } from './libc.js';
import { fcntl } from './fd.js';

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MFD_CLOEXEC = 0x1;
export const MFD_ALLOW_SEALING = 0x2;
export const MFD_HUGETLB = 0x4;
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
export const MADV_DONTNEED = 4;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_DONTDUMP = 16;
const MAP_FAILED = 0xffffffffffffffffn;

const memfd_create = libc.func('memfd_create', 'int', ['str', 'uint']);
const ftruncate_ = libc.func('ftruncate', 'int', ['int', 'int64']);
const mmap_ = libc.func('mmap', 'void *', ['void *', 'size_t', 'int', 'int', 'int', 'int64']);
const munmap_ = libc.func('munmap', 'int', ['void *', 'size_t']);
const madvise_ = libc.func('madvise', 'int', ['void *', 'size_t', 'int']);

export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return check('memfd_create', memfd_create(name, flags) as number, { name });
}

/**
 * Makes sure nobody can shrink the file behind a shared mapping: a page past a new end raises SIGBUS in whoever
 * touches it, which no JS code can catch. Adds F_SEAL_SHRINK (plus `more`) unless it is there already. Returns
 * false when the file takes no seals: not a memfd, a memfd made without MFD_ALLOW_SEALING, or one sealed with
 * F_SEAL_SEAL but not F_SEAL_SHRINK.
 */
export function sealAgainstShrink(fd: number, more = 0): boolean {
  let seals: number;
  try {
    seals = fcntl(fd, F_GET_SEALS, 0);
  } catch {
    return false;
  }
  const want = F_SEAL_SHRINK | more;
  if ((seals & want) === want) return true;
  if ((seals & F_SEAL_SEAL) !== 0) return (seals & F_SEAL_SHRINK) !== 0;
  try {
    fcntl(fd, F_ADD_SEALS, want);
    return true;
  } catch {
    return false;
  }
}

export function ftruncate(fd: number, size: number): void {
  check('ftruncate', ftruncate_(fd, size) as number, { fd, size });
}

export function mmap(addr: PtrArg, len: number, prot: number, flags: number, fd: number, offset: number): bigint {
  const p = mmap_(addr, len, prot, flags, fd, offset) as bigint | null;
  if (p === null || p === MAP_FAILED) throw new SysError('mmap', koffi.errno(), { len, fd, offset });
  return p;
}

export function munmap(ptr: bigint, len: number): void {
  check('munmap', munmap_(ptr, len) as number, { len });
}

export function madvise(ptr: bigint, len: number, advice: number): void {
  check('madvise', madvise_(ptr, len, advice) as number, { len, advice });
}

/**
 * Zero-copy view of raw memory. Creating one costs microseconds: make it once and keep it.
 * V8 caps a typed array near 2^32 bytes on Node 20, so callers view large mappings in chunks.
 */
export function viewOf(ptr: bigint, len: number): Uint8Array {
  return new Uint8Array(koffi.view(ptr, len) as ArrayBuffer);
}

/** An mmapped range with its cached host view. */
export class Mapping {
  private live = true;
  readonly bytes: Uint8Array;
  constructor(
    readonly ptr: bigint,
    readonly size: number,
  ) {
    this.bytes = size > 0 && size <= 0x1_0000_0000 ? viewOf(ptr, size) : new Uint8Array(0);
  }
  unmap(): void {
    if (!this.live) return;
    this.live = false;
    munmap(this.ptr, this.size);
  }
}

export function mapFd(
  fd: number,
  size: number,
  offset = 0,
  opts: { prot?: number; flags?: number } = {},
): Mapping {
  const prot = opts.prot ?? PROT_READ | PROT_WRITE;
  const flags = opts.flags ?? MAP_SHARED;
  return new Mapping(mmap(null, size, prot, flags, fd, offset), size);
}

export function mapAnonymous(size: number, flags = 0): Mapping {
  return new Mapping(
    mmap(null, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0),
    size,
  );
}
