import { KumoError } from '../errors.js';

export class VirtioHeaderError extends KumoError {}

/** virtio-blk feature bit numbers. */
export const VIRTIO_BLK_F_BARRIER = 0; // legacy
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_SCSI = 7; // legacy
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;
export const VIRTIO_BLK_F_LIFETIME = 15;
export const VIRTIO_BLK_F_SECURE_ERASE = 16;

/** Request types. */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status byte written last into the request's final writable byte. */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

export const VIRTIO_BLK_SECTOR_SIZE = 512;
export const VIRTIO_BLK_SECTOR_SHIFT = 9;
/** GET_ID answers with this many bytes (NUL-padded, not necessarily NUL-terminated). */
export const VIRTIO_BLK_ID_BYTES = 20;
/** Request header: type u32, reserved/ioprio u32, sector u64. */
export const VIRTIO_BLK_OUTHDR_SIZE = 16;
/** DISCARD / WRITE_ZEROES segment: sector u64, num_sectors u32, flags u32. */
export const VIRTIO_BLK_DISCARD_SEG_SIZE = 16;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** struct virtio_blk_config field offsets (little endian). */
export const BlkConfig = {
  capacity: 0, // u64, in 512-byte sectors
  size_max: 8, // u32
  seg_max: 12, // u32
  geometry_cylinders: 16, // u16
  geometry_heads: 18, // u8
  geometry_sectors: 19, // u8
  blk_size: 20, // u32
  physical_block_exp: 24, // u8
  alignment_offset: 25, // u8
  min_io_size: 26, // u16
  opt_io_size: 28, // u32
  writeback: 32, // u8 (wce)
  num_queues: 34, // u16
  max_discard_sectors: 36, // u32
  max_discard_seg: 40, // u32
  discard_sector_alignment: 44, // u32
  max_write_zeroes_sectors: 48, // u32
  max_write_zeroes_seg: 52, // u32
  write_zeroes_may_unmap: 56, // u8
  max_secure_erase_sectors: 60, // u32
  max_secure_erase_seg: 64, // u32
  secure_erase_sector_alignment: 68, // u32
} as const;
/** Config size up to and including the secure-erase fields. */
export const BLK_CONFIG_SIZE = 72;

export interface BlkRequestHeader {
  type: number;
  ioprio: number;
  /** Sector (512 bytes) as a number; values >= 2^53 are refused on decode. */
  sector: number;
}

export function decodeBlkHeader(b: Uint8Array): BlkRequestHeader {
  if (b.length < VIRTIO_BLK_OUTHDR_SIZE) throw new VirtioHeaderError('virtio-blk request header is too short', { len: b.length });
  const dv = new DataView(b.buffer, b.byteOffset, VIRTIO_BLK_OUTHDR_SIZE);
  const lo = dv.getUint32(8, true);
  const hi = dv.getUint32(12, true);
  if (hi >= 0x20_0000) throw new VirtioHeaderError('virtio-blk sector is out of range', { hi, lo });
  return { type: dv.getUint32(0, true), ioprio: dv.getUint32(4, true), sector: hi * 0x1_0000_0000 + lo };
}

export function encodeBlkHeader(h: BlkRequestHeader, out: Uint8Array = new Uint8Array(VIRTIO_BLK_OUTHDR_SIZE)): Uint8Array {
  writeBlkHeader(new DataView(out.buffer, out.byteOffset, VIRTIO_BLK_OUTHDR_SIZE), h.type, h.ioprio, h.sector);
  return out;
}

/** encodeBlkHeader into a view the caller keeps (a driver's request slot in guest memory): nothing allocated. */
export function writeBlkHeader(dv: DataView, type: number, ioprio: number, sector: number): void {
  if (!Number.isSafeInteger(sector) || sector < 0) throw new VirtioHeaderError('virtio-blk sector must be a safe integer', { sector });
  dv.setUint32(0, type, true);
  dv.setUint32(4, ioprio, true);
  dv.setUint32(8, sector % 0x1_0000_0000, true);
  dv.setUint32(12, Math.floor(sector / 0x1_0000_0000), true);
}

export interface BlkDiscardSegment {
  sector: number;
  numSectors: number;
  flags: number;
}

export function decodeBlkDiscardSegment(b: Uint8Array, offset = 0): BlkDiscardSegment {
  if (b.length < offset + VIRTIO_BLK_DISCARD_SEG_SIZE) throw new VirtioHeaderError('virtio-blk discard segment is too short', { len: b.length, offset });
  const dv = new DataView(b.buffer, b.byteOffset + offset, VIRTIO_BLK_DISCARD_SEG_SIZE);
  const lo = dv.getUint32(0, true);
  const hi = dv.getUint32(4, true);
  if (hi >= 0x20_0000) throw new VirtioHeaderError('virtio-blk discard sector is out of range', { hi, lo });
  return { sector: hi * 0x1_0000_0000 + lo, numSectors: dv.getUint32(8, true), flags: dv.getUint32(12, true) };
}

export function encodeBlkDiscardSegment(s: BlkDiscardSegment, out: Uint8Array = new Uint8Array(VIRTIO_BLK_DISCARD_SEG_SIZE)): Uint8Array {
  const dv = new DataView(out.buffer, out.byteOffset, VIRTIO_BLK_DISCARD_SEG_SIZE);
  dv.setUint32(0, s.sector % 0x1_0000_0000, true);
  dv.setUint32(4, Math.floor(s.sector / 0x1_0000_0000), true);
  dv.setUint32(8, s.numSectors, true);
  dv.setUint32(12, s.flags, true);
  return out;
}
