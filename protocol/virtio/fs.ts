import { VirtioHeaderError } from './blk.js';

/** struct virtio_fs_config: tag[36] (UTF-8, NUL-padded), num_request_queues u32, notify_buf_size u32. */
export const FS_TAG_SIZE = 36;
export const FsConfig = {
  tag: 0,
  num_request_queues: 36,
  notify_buf_size: 40,
} as const;
export const FS_CONFIG_SIZE = 40;
/** Queue 0 is the hiprio queue, then (optionally) the notification queue, then request queues. */
export const VIRTIO_FS_F_NOTIFICATION = 0;

/** Encodes the virtio-fs config space (tag must be 1..36 UTF-8 bytes). */
export function encodeFsConfig(tag: string, numRequestQueues: number): Uint8Array {
  const t = new TextEncoder().encode(tag);
  if (t.length === 0 || t.length > FS_TAG_SIZE) throw new VirtioHeaderError(`virtio-fs tag must be 1..${FS_TAG_SIZE} bytes`, { tag });
  const out = new Uint8Array(FS_CONFIG_SIZE);
  out.set(t, FsConfig.tag);
  new DataView(out.buffer).setUint32(FsConfig.num_request_queues, numRequestQueues, true);
  return out;
}
