import { VirtioHeaderError } from './blk.js';

/** virtio-net feature bit numbers. */
export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_GUEST_UFO = 10;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_HOST_UFO = 14;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_CTRL_VLAN = 19;
export const VIRTIO_NET_F_CTRL_RX_EXTRA = 20;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;
export const VIRTIO_NET_F_GUEST_USO4 = 54;
export const VIRTIO_NET_F_GUEST_USO6 = 55;
export const VIRTIO_NET_F_HOST_USO = 56;
export const VIRTIO_NET_F_HASH_REPORT = 57;
export const VIRTIO_NET_F_RSS = 60;
export const VIRTIO_NET_F_RSC_EXT = 61;
export const VIRTIO_NET_F_STANDBY = 62;
export const VIRTIO_NET_F_SPEED_DUPLEX = 63;

/** virtio_net_hdr.flags */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;
/** virtio_net_hdr.gso_type */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** virtio 1.x header (with num_buffers): flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16, num_buffers u16. */
export const VIRTIO_NET_HDR_SIZE = 12;

/** config.status bits */
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** struct virtio_net_config field offsets. */
export const NetConfig = {
  mac: 0, // u8[6]
  status: 6, // u16
  max_virtqueue_pairs: 8, // u16
  mtu: 10, // u16
  speed: 12, // u32
  duplex: 16, // u8
} as const;
export const NET_CONFIG_SIZE = 17;

/** Control queue classes/commands most drivers send. */
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_VLAN = 2;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
export const VIRTIO_NET_CTRL_GUEST_OFFLOADS = 5;
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;

export interface NetHeader {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  numBuffers: number;
}

export function decodeNetHeader(b: Uint8Array): NetHeader {
  if (b.length < VIRTIO_NET_HDR_SIZE) throw new VirtioHeaderError('virtio-net header is too short', { len: b.length });
  const dv = new DataView(b.buffer, b.byteOffset, VIRTIO_NET_HDR_SIZE);
  return {
    flags: dv.getUint8(0),
    gsoType: dv.getUint8(1),
    hdrLen: dv.getUint16(2, true),
    gsoSize: dv.getUint16(4, true),
    csumStart: dv.getUint16(6, true),
    csumOffset: dv.getUint16(8, true),
    numBuffers: dv.getUint16(10, true),
  };
}

export function encodeNetHeader(h: Partial<NetHeader>, out: Uint8Array = new Uint8Array(VIRTIO_NET_HDR_SIZE)): Uint8Array {
  if (out.length < VIRTIO_NET_HDR_SIZE) throw new VirtioHeaderError('virtio-net header buffer is too short', { len: out.length });
  const dv = new DataView(out.buffer, out.byteOffset, VIRTIO_NET_HDR_SIZE);
  dv.setUint8(0, h.flags ?? 0);
  dv.setUint8(1, h.gsoType ?? VIRTIO_NET_HDR_GSO_NONE);
  dv.setUint16(2, h.hdrLen ?? 0, true);
  dv.setUint16(4, h.gsoSize ?? 0, true);
  dv.setUint16(6, h.csumStart ?? 0, true);
  dv.setUint16(8, h.csumOffset ?? 0, true);
  dv.setUint16(10, h.numBuffers ?? 0, true);
  return out;
}

/** Parses "aa:bb:cc:dd:ee:ff" into 6 bytes; throws VirtioHeaderError otherwise. */
export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-fA-F]{2})(?::([0-9a-fA-F]{2})){5}$/.test(s) ? s.split(':') : null;
  if (!m) throw new VirtioHeaderError('invalid MAC address', { mac: s });
  return Uint8Array.from(m.map((x) => parseInt(x, 16)));
}

export function formatMac(b: Uint8Array): string {
  return Array.from(b.subarray(0, 6), (x) => x.toString(16).padStart(2, '0')).join(':');
}
