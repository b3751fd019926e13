/** Human-readable names of virtio feature bits, for reports. */
const COMMON: Record<number, string> = {
  24: 'NOTIFY_ON_EMPTY', 26: 'LOG_ALL', 27: 'ANY_LAYOUT', 28: 'INDIRECT_DESC', 29: 'EVENT_IDX', 30: 'PROTOCOL_FEATURES',
  32: 'VERSION_1', 33: 'ACCESS_PLATFORM', 34: 'RING_PACKED', 35: 'IN_ORDER', 36: 'ORDER_PLATFORM', 37: 'SR_IOV',
  38: 'NOTIFICATION_DATA', 40: 'RING_RESET',
};

const BLK: Record<number, string> = {
  1: 'SIZE_MAX', 2: 'SEG_MAX', 4: 'GEOMETRY', 5: 'RO', 6: 'BLK_SIZE', 9: 'FLUSH', 10: 'TOPOLOGY', 11: 'CONFIG_WCE',
  12: 'MQ', 13: 'DISCARD', 14: 'WRITE_ZEROES', 15: 'LIFETIME', 16: 'SECURE_ERASE',
};

const PROTOCOL = [
  'MQ', 'LOG_SHMFD', 'RARP', 'REPLY_ACK', 'NET_MTU', 'BACKEND_REQ', 'CROSS_ENDIAN', 'CRYPTO_SESSION', 'PAGEFAULT',
  'CONFIG', 'BACKEND_SEND_FD', 'HOST_NOTIFIER', 'INFLIGHT_SHMFD', 'RESET_DEVICE', 'INBAND_NOTIFICATIONS',
  'CONFIGURE_MEM_SLOTS', 'STATUS', 'XEN_MMAP', 'SHARED_OBJECT', 'DEVICE_STATE',
];

function names(mask: bigint, table: (n: number) => string | undefined): string[] {
  const out: string[] = [];
  for (let n = 0; n < 64; n++) if (mask & (1n << BigInt(n))) out.push(table(n) ?? `bit${n}`);
  return out;
}

export type DeviceKind = 'blk' | 'net' | 'fs';

/** Names of virtio feature bits; device-specific bits (0-23) come from `device` (other kinds may pass their own table). */
export function featureNames(mask: bigint, device: DeviceKind | Record<number, string>): string[] {
  const dev = device === 'blk' ? BLK : typeof device === 'object' ? device : {};
  return names(mask, (n) => (n < 24 ? dev[n] : COMMON[n]));
}

export function protocolFeatureNames(mask: bigint): string[] {
  return names(mask, (n) => PROTOCOL[n]);
}
