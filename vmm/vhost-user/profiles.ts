// Per device type: the virtio features kumo may offer, the protocol features it asks for, and the
// config space it presents (Cloud Hypervisor's vhost-user blk/net/fs front-ends).
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import {
  bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../../protocol/virtio/features.js';
import {
  BlkConfig, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
} from '../../protocol/virtio/blk.js';
import {
  VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
} from '../../protocol/virtio/net.js';
import { encodeFsConfig } from '../../protocol/virtio/fs.js';

/** Cloud Hypervisor's default ring features for vhost-user devices (bit 30 is handled separately). */
export const DEFAULT_VIRTIO_FEATURES = bits(VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX, VIRTIO_F_VERSION_1);

const PROTO_BASE = protocolFeatures(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS);
/** INFLIGHT_SHMFD: a back-end restarted under a running guest resumes what its predecessor had in flight (see link.ts). */
export const BLK_PROTOCOL_FEATURES = PROTO_BASE | protocolFeatures(ProtocolFeature.CONFIG, ProtocolFeature.INFLIGHT_SHMFD);
export const NET_PROTOCOL_FEATURES = PROTO_BASE | protocolFeatures(ProtocolFeature.CONFIG);
export const FS_PROTOCOL_FEATURES = PROTO_BASE;

/** struct virtio_blk_config up to write_zeroes_may_unmap + padding, as Cloud Hypervisor reads it. */
export const BLK_CONFIG_LEN = 60;
/** mac, status, max_virtqueue_pairs, mtu. */
export const NET_CONFIG_LEN = 12;

export function blkFeatureMask(numQueues: number): bigint {
  let m = DEFAULT_VIRTIO_FEATURES | bits(
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
  );
  if (numQueues > 1) m |= bits(VIRTIO_BLK_F_MQ);
  return m;
}

/** The guest may only flip the writeback byte (CONFIG_WCE). */
export const BLK_WRITABLE: [number, number][] = [[BlkConfig.writeback, 1]];

/** Cloud Hypervisor's blk config fix-up: num_queues is what the VMM exposes, not what the backend could do. */
export function patchBlkConfig(cfg: Uint8Array, numQueues: number): void {
  new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength).setUint16(BlkConfig.num_queues, numQueues, true);
}

export interface NetOffloads {
  tso: boolean;
  ufo: boolean;
  csum: boolean;
}

/** Without the control queue kumo offers no CTRL_VQ/MQ: one RX/TX pair. */
export function netFeatureMask(o: NetOffloads): bigint {
  let m = DEFAULT_VIRTIO_FEATURES | bits(VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU);
  if (o.csum) {
    m |= bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM);
    if (o.tso) {
      m |= bits(VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN);
      m |= bits(VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN);
    }
    if (o.ufo) m |= bits(VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO);
  }
  return m;
}

/** The VMM owns the MAC (Cloud Hypervisor adds VIRTIO_NET_F_MAC itself). */
export const NET_VMM_FEATURES = bits(VIRTIO_NET_F_MAC);

export function netConfig(mac: string, mtu: number): Uint8Array {
  const out = new Uint8Array(NET_CONFIG_LEN);
  const dv = new DataView(out.buffer);
  mac.split(':').forEach((h, i) => (out[i] = parseInt(h, 16)));
  dv.setUint16(8, 1, true); // max_virtqueue_pairs
  dv.setUint16(10, mtu, true);
  return out;
}

export function fsConfig(tag: string, requestQueues: number): Uint8Array {
  return encodeFsConfig(tag, requestQueues);
}
