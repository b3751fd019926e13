// The net device as the vhost-user daemon sees it (main thread): features, config space, and the
// TAP offload settings that follow from what the guest acked.
import { WarnLimiter, type Logger } from '../../protocol/log.js';
import type { VhostUserBackend } from '../../protocol/vhost-user/backend-types.js';
import { ProtocolFeature } from '../../protocol/vhost-user/messages.js';
import {
  VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_LINK_UP, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VHOST_F_LOG_ALL, bits, hasFeature,
} from '../../protocol/virtio/index.js';
import {
  TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, type Tap,
} from '../../protocol/sys/tap.js';
import { counterBuffer } from './counters.js';
import { NET_HDR_LEN, NET_HDR_LEN_LEGACY } from './virtio-net.js';
import type { NetWorkerData } from './worker.js';
import { siblingWorkerModule } from '../../protocol/vhost-user/worker-module.js';

/** Bytes of virtio_net_config we serve: mac, status, max_virtqueue_pairs, mtu. */
const CONFIG_SIZE = 12;

export interface NetDeviceSettings {
  queuePairs: number;
  queueSize: number;
  /** Guest MAC for config space, if the user gave one. */
  mac?: Uint8Array;
  /** MTU offered to the guest, if the user gave one. */
  mtu?: number;
  /** Host-side MTU of the TAP (bounds frame sizes). */
  tapMtu: number;
}

/** TUN_F_* offloads the TAP may use towards the guest, from the guest's acked receive features. */
export function tapOffloads(features: bigint): number {
  const f = (n: number) => hasFeature(features, n);
  let off = 0;
  if (f(VIRTIO_NET_F_GUEST_CSUM)) {
    off |= TUN_F_CSUM;
    if (f(VIRTIO_NET_F_GUEST_TSO4)) off |= TUN_F_TSO4;
    if (f(VIRTIO_NET_F_GUEST_TSO6)) off |= TUN_F_TSO6;
    if (f(VIRTIO_NET_F_GUEST_ECN) && (off & (TUN_F_TSO4 | TUN_F_TSO6))) off |= TUN_F_TSO_ECN;
    if (f(VIRTIO_NET_F_GUEST_UFO)) off |= TUN_F_UFO;
  }
  return off;
}

export class NetBackend implements VhostUserBackend {
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly queuesPerWorker = 2;
  readonly counters: SharedArrayBuffer;
  readonly queueWorker: { module: string; data: NetWorkerData };
  private readonly config = new Uint8Array(CONFIG_SIZE);
  /** Features are acked at every device start, which a guest resetting its NIC in a loop repeats at will: rate-limited. */
  private readonly ackLog: WarnLimiter;

  constructor(private readonly tap: Tap, private readonly s: NetDeviceSettings, log: Logger) {
    this.ackLog = new WarnLimiter(log);
    if (tap.fds.length !== s.queuePairs) throw new Error(`TAP has ${tap.fds.length} queues for ${s.queuePairs} pairs`);
    this.numQueues = s.queuePairs * 2;
    this.maxQueueSize = s.queueSize;
    this.counters = counterBuffer(s.queuePairs);
    this.queueWorker = {
      module: siblingWorkerModule(import.meta.url, 'worker'),
      data: { tapFds: [...tap.fds], tapName: tap.name, counters: this.counters, mtu: s.tapMtu, queueSize: s.queueSize },
    };
    const dv = new DataView(this.config.buffer);
    if (s.mac) this.config.set(s.mac.subarray(0, 6), 0);
    dv.setUint16(6, VIRTIO_NET_S_LINK_UP, true);
    dv.setUint16(8, s.queuePairs, true);
    dv.setUint16(10, s.mtu ?? s.tapMtu, true);
  }

  /**
   * CTRL_VQ with MQ, as Cloud Hypervisor's vhost_user_net offers them: the front-end serves the control queue itself
   * (Cloud Hypervisor only if the back-end offers it, QEMU and DPDK's virtio-user always) and never hands it to the
   * back-end; a Linux guest refuses a device with MQ but no control queue (virtio 1.2 §5.1.3.1).
   */
  features(): bigint {
    let f = bits(
      VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
      VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_UFO,
      VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_UFO,
      VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    );
    if (this.s.mac) f |= bits(VIRTIO_NET_F_MAC);
    if (this.s.mtu !== undefined) f |= bits(VIRTIO_NET_F_MTU);
    // Dirty logging, so that QEMU and Cloud Hypervisor can live-migrate the guest (with LOG_SHMFD).
    return f | bits(VHOST_F_LOG_ALL);
  }

  protocolFeatures(): bigint {
    return bits(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.CONFIG, ProtocolFeature.LOG_SHMFD);
  }

  getConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(size);
    if (offset < CONFIG_SIZE) out.set(this.config.subarray(offset, Math.min(CONFIG_SIZE, offset + size)));
    return out;
  }

  ackFeatures(features: bigint): void {
    const offload = tapOffloads(features);
    const hdr = hasFeature(features, VIRTIO_F_VERSION_1) || hasFeature(features, VIRTIO_NET_F_MRG_RXBUF) ? NET_HDR_LEN : NET_HDR_LEN_LEGACY;
    this.tap.setVnetHdrSize(hdr);
    this.tap.setOffload(offload);
    this.ackLog.info({ features: `0x${features.toString(16)}`, tapOffload: offload, vnetHdr: hdr }, 'features acked');
  }
}
