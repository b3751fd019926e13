import { GuestMemoryError } from './errors.js';

/** What a region is made of: where the guest sees it and which fd/offset backs it. */
export interface MemoryRegionSpec {
  guestAddr: number;
  size: number;
  fd: number;
  fdOffset: number;
  /** The front-end's (VMM's) virtual address of the region; vhost-user ring addresses are given in this space. */
  userAddr: number;
}

/** 1 GiB: V8 typed arrays (and koffi views) are kept well below their length limits. */
export const CHUNK_SIZE = 1 << 30;
/**
 * Each chunk view extends this far past its chunk end (the views overlap; they share the mapping),
 * so any access of up to CHUNK_OVERLAP bytes starting inside a chunk is served by a single view.
 */
export const CHUNK_OVERLAP = 4 << 20;

/** Copies up to this many bytes with a plain loop (cheaper than a subarray + set). */
const SMALL_COPY = 64;
const SCRATCH = new Uint8Array(SMALL_COPY);

/** One mapped region: spec + host address + zero-copy views of its bytes (1 GiB chunks, overlapping). */
export class GuestRegion implements MemoryRegionSpec {
  readonly guestAddr: number;
  readonly size: number;
  readonly fd: number;
  readonly fdOffset: number;
  readonly userAddr: number;
  /** Host address of the first byte (for iovecs / io_uring); 0n for views made without a mapping (tests). */
  readonly ptr: bigint;
  /** chunks[i] views [i*chunkSize, min(size, (i+1)*chunkSize + overlap)). */
  readonly chunks: readonly Uint8Array[];
  /** DataViews over the same chunks (cached: creating one per access would allocate on the hot path). */
  readonly dataViews: readonly DataView[];
  readonly chunkSize: number;
  /** Called by GuestMemory.close()/removeRegion(): munmap + close the fd this region owns. */
  readonly release: () => void;
  /** The file behind the mapping takes no shrink seal, so whoever else holds it could truncate it (SIGBUS here). */
  shrinkable = false;

  constructor(
    spec: MemoryRegionSpec,
    ptr: bigint,
    viewOf: (offset: number, len: number) => Uint8Array,
    release: () => void = () => {},
    chunkSize: number = CHUNK_SIZE,
    overlap: number = CHUNK_OVERLAP,
  ) {
    checkSpec(spec);
    if (!Number.isInteger(Math.log2(chunkSize))) {
      throw new GuestMemoryError('chunk size must be a power of two', { chunkSize });
    }
    this.guestAddr = spec.guestAddr;
    this.size = spec.size;
    this.fd = spec.fd;
    this.fdOffset = spec.fdOffset;
    this.userAddr = spec.userAddr;
    this.ptr = ptr;
    this.release = release;
    this.chunkSize = chunkSize;
    const chunks: Uint8Array[] = [];
    for (let off = 0; off < spec.size; off += chunkSize) {
      chunks.push(viewOf(off, Math.min(spec.size - off, chunkSize + overlap)));
    }
    this.chunks = chunks;
    this.dataViews = chunks.map((c) => new DataView(c.buffer, c.byteOffset, c.byteLength));
  }

  /** The whole region as one view; only regions that fit in one chunk have one. */
  get bytes(): Uint8Array {
    if (this.chunks.length !== 1) {
      throw new GuestMemoryError('region is larger than one view chunk; use GuestMemory.segments()', {
        guestAddr: this.guestAddr,
        size: this.size,
      });
    }
    return this.chunks[0];
  }

  /** Zero-copy view of [off, off+len) (offsets inside the region, already bounds-checked); null if it crosses a view. */
  viewAt(off: number, len: number): Uint8Array | null {
    if (this.chunks.length === 1) return this.chunks[0].subarray(off, off + len);
    const ci = this.chunkIndex(off);
    const chunk = this.chunks[ci];
    const coff = off - ci * this.chunkSize;
    if (coff + len > chunk.length) return null;
    return chunk.subarray(coff, coff + len);
  }

  /** The view chunk that region offset `off` starts in (the last one for the region's end: an empty range there). */
  private chunkIndex(off: number): number {
    return this.chunks.length === 1 ? 0 : Math.min(Math.floor(off / this.chunkSize), this.chunks.length - 1);
  }

  /**
   * Copies region bytes [off, off+dst.length) into dst (bounds already checked). A short copy inside
   * one view moves byte by byte: no subarray, no generator (request headers, replies, status bytes).
   */
  copyTo(off: number, dst: Uint8Array): void {
    const len = dst.length;
    const ci = this.chunkIndex(off);
    const chunk = this.chunks[ci];
    const coff = off - ci * this.chunkSize;
    if (coff + len <= chunk.length) {
      if (len <= SMALL_COPY) {
        // Through a scratch: dst may be a view of this very memory, overlapping the source.
        for (let i = 0; i < len; i++) SCRATCH[i] = chunk[coff + i];
        for (let i = 0; i < len; i++) dst[i] = SCRATCH[i];
      } else dst.set(chunk.subarray(coff, coff + len));
      return;
    }
    let o = 0;
    for (const p of this.pieces(off, len)) {
      dst.set(p.bytes, o);
      o += p.bytes.length;
    }
  }

  /** Copies src into region bytes [off, off+src.length) (bounds already checked); see copyTo. */
  copyFrom(off: number, src: Uint8Array): void {
    const len = src.length;
    const ci = this.chunkIndex(off);
    const chunk = this.chunks[ci];
    const coff = off - ci * this.chunkSize;
    if (coff + len <= chunk.length) {
      if (len <= SMALL_COPY) {
        for (let i = 0; i < len; i++) SCRATCH[i] = src[i];
        for (let i = 0; i < len; i++) chunk[coff + i] = SCRATCH[i];
      } else chunk.set(src, coff);
      return;
    }
    let o = 0;
    for (const p of this.pieces(off, len)) {
      p.bytes.set(src.subarray(o, o + p.bytes.length));
      o += p.bytes.length;
    }
  }

  /** Pieces of [off, off+len) (already bounds-checked), each inside one view, in order. */
  *pieces(off: number, len: number): Generator<{ offset: number; bytes: Uint8Array }> {
    let pos = off;
    const end = off + len;
    while (pos < end) {
      const ci = this.chunks.length === 1 ? 0 : Math.floor(pos / this.chunkSize);
      const chunk = this.chunks[ci];
      const coff = pos - ci * this.chunkSize;
      const n = Math.min(end - pos, chunk.length - coff);
      yield { offset: pos, bytes: chunk.subarray(coff, coff + n) };
      pos += n;
    }
  }
}

function checkSpec(s: MemoryRegionSpec): void {
  const ok =
    Number.isSafeInteger(s.guestAddr) && s.guestAddr >= 0 &&
    Number.isSafeInteger(s.size) && s.size > 0 &&
    Number.isSafeInteger(s.guestAddr + s.size) &&
    Number.isSafeInteger(s.fdOffset) && s.fdOffset >= 0 &&
    Number.isSafeInteger(s.userAddr) && s.userAddr >= 0 &&
    Number.isSafeInteger(s.userAddr + s.size) &&
    Number.isInteger(s.fd);
  if (!ok) throw new GuestMemoryError('invalid memory region', { ...s });
}
