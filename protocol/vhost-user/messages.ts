/** vhost-user wire constants: request numbers, header flags, protocol feature bits, limits. */

export const HEADER_SIZE = 12;
/** Largest payload we send or accept (rust-vmm uses the same cap). */
export const MAX_PAYLOAD = 4096;
/** SET_MEM_TABLE carries one fd per region, at most this many regions. */
export const MAX_MEM_REGIONS = 8;
/** Largest number of fds on any message (the memory table). */
export const MAX_FDS = MAX_MEM_REGIONS;
/** GET/SET_CONFIG payload limit (QEMU's VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;
/**
 * Where rust-vmm front-ends (Cloud Hypervisor) say the device config starts: a GET/SET_CONFIG offset of 0x100 + n
 * (the virtio-mmio layout) means config offset n. QEMU sends config offsets; libvhost-user and Cloud
 * Hypervisor's own back-ends ignore the offset. No device config is that long, so both conventions can be served.
 */
export const VHOST_USER_CONFIG_OFFSET = 0x100;
export const CONFIG_HEADER_SIZE = 12;
/** GET_SHMEM_CONFIG: at most this many shared memory regions. */
export const MAX_SHMEM_REGIONS = 256;

export const FLAG_VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

/** SET_VRING_KICK/CALL/ERR u64 payload: ring index in bits 0-7, bit 8 = no fd attached. */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;
/** vring addr flags: VHOST_VRING_F_LOG. */
export const VRING_F_LOG = 0x1;

/** Virtio feature bit 30: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const F_PROTOCOL_FEATURES = 1n << 30n;
/** Virtio feature bit 26: dirty logging (migration). */
export const F_LOG_ALL = 1n << 26n;

export enum Request {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  CREATE_CRYPTO_SESSION = 26,
  CLOSE_CRYPTO_SESSION = 27,
  POSTCOPY_ADVISE = 28,
  POSTCOPY_LISTEN = 29,
  POSTCOPY_END = 30,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  GPU_SET_SOCKET = 33,
  RESET_DEVICE = 34,
  VRING_KICK = 35,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
  GET_SHARED_OBJECT = 41,
  SET_DEVICE_STATE_FD = 42,
  CHECK_DEVICE_STATE = 43,
  GET_SHMEM_CONFIG = 44,
}

export const MAX_REQUEST = Request.GET_SHMEM_CONFIG;

export function requestName(r: number): string {
  return Request[r] ?? `UNKNOWN(${r})`;
}

/** VHOST_USER_PROTOCOL_F_* bit numbers. */
export enum ProtocolFeature {
  MQ = 0,
  LOG_SHMFD = 1,
  RARP = 2,
  REPLY_ACK = 3,
  NET_MTU = 4,
  BACKEND_REQ = 5,
  CROSS_ENDIAN = 6,
  CRYPTO_SESSION = 7,
  PAGEFAULT = 8,
  CONFIG = 9,
  BACKEND_SEND_FD = 10,
  HOST_NOTIFIER = 11,
  INFLIGHT_SHMFD = 12,
  RESET_DEVICE = 13,
  INBAND_NOTIFICATIONS = 14,
  CONFIGURE_MEM_SLOTS = 15,
  STATUS = 16,
  XEN_MMAP = 17,
  SHARED_OBJECT = 18,
  DEVICE_STATE = 19,
}

/** Mask of the given protocol feature bits. */
export function protocolFeatures(...bits: ProtocolFeature[]): bigint {
  let m = 0n;
  for (const b of bits) m |= 1n << BigInt(b);
  return m;
}

export function hasProtocolFeature(mask: bigint, bit: ProtocolFeature): boolean {
  return (mask & (1n << BigInt(bit))) !== 0n;
}

/** Every protocol bit defined by the spec (0-19); bits above are in flux and never advertised. */
export const ALL_PROTOCOL_FEATURES = (1n << 20n) - 1n;

/** SET_CONFIG flags: the spec says 0 = front-end write, 1 = migration; rust-vmm sends 1 = writable, 2 = migration. */
export const CONFIG_FLAG_WRITABLE = 0x1;
export const CONFIG_FLAG_LIVE_MIGRATION = 0x2;

/** SET_DEVICE_STATE_FD direction and phase. */
export const DEVICE_STATE_SAVE = 0;
export const DEVICE_STATE_LOAD = 1;
export const DEVICE_STATE_PHASE_STOPPED = 0;
