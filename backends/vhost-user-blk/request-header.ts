import type { GuestMemory } from '../../protocol/memory/index.js';
import { readFromChain, type Segment } from '../../protocol/virtqueue/index.js';
import { VIRTIO_BLK_OUTHDR_SIZE } from '../../protocol/virtio/index.js';

export const SECTOR = 512;
const TWO32 = 0x1_0000_0000;
/** Sectors from 2^44 on (2^44 × 512 = 2^53 bytes, the largest exact offset) have this high word or more (it cut at 2^41). */
const MAX_SECTOR_HI = 1 << 12;

/** The byte offset of a sector given as two 32-bit words; -1 at 2^53 bytes and beyond, out of range for any image. */
export function sectorOffset(lo: number, hi: number): number {
  return hi >= MAX_SECTOR_HI ? -1 : (hi * TWO32 + lo) * SECTOR;
}

/** Whether [offset, offset + len) lies within an image of `size` bytes, in whole sectors. */
export function rangeOk(offset: number, len: number, size: number): boolean {
  return offset >= 0 && len % SECTOR === 0 && offset + len <= size;
}

/** Reads requests' headers from guest memory: `type` and `offset` hold what the last read() found. */
export class RequestHeader {
  type = 0;
  /** The byte offset of the header's sector (see sectorOffset). */
  offset = 0;
  private readonly hdr = new Uint8Array(VIRTIO_BLK_OUTHDR_SIZE);
  private readonly hdrView = new DataView(this.hdr.buffer);

  /** Reads the header at the start of `readable`, which holds at least VIRTIO_BLK_OUTHDR_SIZE bytes. */
  read(mem: GuestMemory, readable: Segment[]): void {
    let secLo: number;
    let secHi: number;
    const r0 = readable[0];
    if (r0.len >= VIRTIO_BLK_OUTHDR_SIZE) {
      this.type = mem.readU32(r0.addr);
      secLo = mem.readU32(r0.addr + 8);
      secHi = mem.readU32(r0.addr + 12);
    } else {
      readFromChain(mem, readable, 0, this.hdr);
      this.type = this.hdrView.getUint32(0, true);
      secLo = this.hdrView.getUint32(8, true);
      secHi = this.hdrView.getUint32(12, true);
    }
    // Sectors at 2^53 bytes and beyond are out of range for any image (DiskImage refuses larger ones).
    this.offset = sectorOffset(secLo, secHi);
  }
}
