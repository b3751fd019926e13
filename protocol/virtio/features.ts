/** Feature bit numbers shared by all virtio devices (and vhost). Use `bit(n)` to get the mask. */
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VHOST_F_LOG_ALL = 26;
export const VIRTIO_F_ANY_LAYOUT = 27;
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;
export const VIRTIO_F_ORDER_PLATFORM = 36;
export const VIRTIO_F_SR_IOV = 37;
export const VIRTIO_F_NOTIFICATION_DATA = 38;
export const VIRTIO_F_RING_RESET = 40;

/** 1n << BigInt(n). */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** Mask of several feature bit numbers. */
export function bits(...ns: number[]): bigint {
  let m = 0n;
  for (const n of ns) m |= 1n << BigInt(n);
  return m;
}

export function hasFeature(features: bigint, n: number): boolean {
  return (features & (1n << BigInt(n))) !== 0n;
}

/** Device status register bits (virtio 1.x §2.1). */
export const VIRTIO_STATUS_ACKNOWLEDGE = 1;
export const VIRTIO_STATUS_DRIVER = 2;
export const VIRTIO_STATUS_DRIVER_OK = 4;
export const VIRTIO_STATUS_FEATURES_OK = 8;
export const VIRTIO_STATUS_DEVICE_NEEDS_RESET = 64;
export const VIRTIO_STATUS_FAILED = 128;
