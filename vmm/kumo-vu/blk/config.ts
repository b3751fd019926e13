import { BlkConfig, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX } from '../../../protocol/virtio/index.js';

/** Bytes of virtio-blk config kumo-vu reads (through max_write_zeroes fields; every back-end has at least these). */
export const BLK_CONFIG_READ = 60;

export interface BlkDeviceConfig {
  /** 512-byte sectors. */
  capacity: number;
  sizeMax: number | null;
  segMax: number | null;
  blkSize: number;
  numQueues: number | null;
  writeback: number;
}

/** Decodes the fields whose features were negotiated (others are null / defaults). */
export function parseBlkConfig(b: Uint8Array, has: (bit: number) => boolean): BlkDeviceConfig {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const lo = dv.getUint32(BlkConfig.capacity, true);
  const hi = dv.getUint32(BlkConfig.capacity + 4, true);
  return {
    capacity: hi * 0x1_0000_0000 + lo,
    sizeMax: has(VIRTIO_BLK_F_SIZE_MAX) ? dv.getUint32(BlkConfig.size_max, true) : null,
    segMax: has(VIRTIO_BLK_F_SEG_MAX) ? dv.getUint32(BlkConfig.seg_max, true) : null,
    blkSize: has(VIRTIO_BLK_F_BLK_SIZE) ? dv.getUint32(BlkConfig.blk_size, true) : 512,
    numQueues: has(VIRTIO_BLK_F_MQ) ? dv.getUint16(BlkConfig.num_queues, true) : null,
    writeback: dv.getUint8(BlkConfig.writeback),
  };
}
