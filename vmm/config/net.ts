// --net (Cloud Hypervisor syntax). kumo attaches vhost-user NICs only; TAP devices are served by a backend.
import { randomBytes } from 'node:crypto';
import { bool, custom, describeSyntax, int, list, parseOptions, str } from '../../protocol/config/options.js';
import { ConfigError } from './errors.js';
import {
  checkPciPlacement, checkQueueSize, PCI_KEYS, RATE_LIMIT_KEYS, refuseRateLimits, requireSocket,
} from './vhost-user-common.js';

const MAC_RE = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;

function parseMacString(v: string): string | null {
  const m = v.toLowerCase();
  if (!MAC_RE.test(m)) return null;
  if (parseInt(m.slice(0, 2), 16) & 1) throw new Error('must be a unicast address');
  if (m === '00:00:00:00:00:00') throw new Error('must not be all zeros');
  return m;
}

const mac = custom<string>('<mac_addr>', parseMacString, (v) => v);

const schema = {
  tap: str({ hint: '<if_name>' }),
  ip: str({ hint: '<ip_addr>' }),
  mask: str({ hint: '<net_mask>' }),
  mac,
  host_mac: mac,
  mtu: int({ min: 68, max: 65535 }),
  iommu: bool(false),
  num_queues: int({ default: 2, min: 2, max: 256 }),
  queue_size: int({ default: 256, min: 1, max: 32768 }),
  vhost_user: bool(false),
  socket: str({ hint: '<vhost_user_socket_path>' }),
  vhost_mode: str({ default: 'client', choices: ['client', 'server'] as const }),
  ...RATE_LIMIT_KEYS,
  offload_tso: bool(true),
  offload_ufo: bool(true),
  offload_csum: bool(true),
  fd: list(int()),
  ...PCI_KEYS,
};

/** A locally administered unicast MAC, as Cloud Hypervisor picks when none is given. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0] & 0xfe) | 0x02;
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}

export type VhostMode = 'Client' | 'Server';

export interface NetJson {
  mac: string;
  host_mac: string | null;
  mtu: number | null;
  iommu: boolean;
  num_queues: number;
  queue_size: number;
  vhost_user: boolean;
  vhost_socket: string | null;
  vhost_mode: VhostMode;
  id: string | null;
  pci_segment: number;
  pci_device_id: number | null;
  offload_tso: boolean;
  offload_ufo: boolean;
  offload_csum: boolean;
}

/** One --net: only `vhost_user=on,socket=...` NICs can be attached by kumo. */
export class NetConfig {
  static readonly SYNTAX = `--net ${describeSyntax(schema)}`;

  id: string | null;
  /** The PCI slot the device asks for (pci_device_id); null: the next free one. */
  pciDeviceId: number | null = null;

  constructor(
    readonly socket: string,
    readonly mac = randomMac(),
    readonly numQueues = 2,
    readonly queueSize = 256,
    readonly vhostMode: VhostMode = 'Client',
    id: string | null = null,
    readonly extra: { hostMac: string | null; mtu: number | null; pciSegment: number; offloadTso: boolean; offloadUfo: boolean; offloadCsum: boolean } = {
      hostMac: null, mtu: null, pciSegment: 0, offloadTso: true, offloadUfo: true, offloadCsum: true,
    },
  ) {
    this.id = id;
  }

  static parse(s: string): NetConfig {
    const what = '--net';
    const o = parseOptions(s, schema, { what, syntax: NetConfig.SYNTAX });
    if (!o.vhost_user) {
      if (o.socket !== undefined) throw new ConfigError(`${what}: socket= needs vhost_user=on`, { socket: o.socket });
      throw new ConfigError(
        `${what}: not supported: kumo attaches vhost-user NICs only; run kumo-vhost-user-net --net-backend ` +
          `"tap=..,socket=<sock>" and pass --net vhost_user=on,socket=<sock>`,
        { tap: o.tap ?? null },
      );
    }
    if (o.fd !== undefined) throw new ConfigError(`${what}: fd= cannot be combined with vhost_user=on`, {});
    if (o.iommu) throw new ConfigError(`${what}: iommu=on is not supported by kumo`, {});
    refuseRateLimits(what, o);
    const c = new NetConfig(
      requireSocket(what, o.socket),
      o.mac ?? randomMac(),
      o.num_queues,
      o.queue_size,
      o.vhost_mode === 'server' ? 'Server' : 'Client',
      o.id ?? null,
      {
        hostMac: o.host_mac ?? null, mtu: o.mtu ?? null, pciSegment: o.pci_segment ?? 0,
        offloadTso: o.offload_tso, offloadUfo: o.offload_ufo, offloadCsum: o.offload_csum,
      },
    );
    c.pciDeviceId = o.pci_device_id ?? null;
    c.validate();
    return c;
  }

  validate(): void {
    requireSocket('--net', this.socket);
    checkQueueSize('--net', this.queueSize);
    if (this.numQueues !== 2) {
      // More pairs need VIRTIO_NET_F_MQ, which needs the control queue the VMM would have to serve.
      throw new ConfigError(`--net: num_queues=${this.numQueues} is not supported (kumo attaches one RX/TX pair: num_queues=2)`, {
        num_queues: this.numQueues,
      });
    }
    if (parseMacString(this.mac) === null) throw new ConfigError(`--net: mac=${this.mac} is not a MAC address`, { mac: this.mac });
    checkPciPlacement('--net', this.extra.pciSegment, this.pciDeviceId);
  }

  toJSON(): NetJson {
    return {
      mac: this.mac,
      host_mac: this.extra.hostMac,
      mtu: this.extra.mtu,
      iommu: false,
      num_queues: this.numQueues,
      queue_size: this.queueSize,
      vhost_user: true,
      vhost_socket: this.socket,
      vhost_mode: this.vhostMode,
      id: this.id,
      pci_segment: this.extra.pciSegment,
      pci_device_id: this.pciDeviceId,
      offload_tso: this.extra.offloadTso,
      offload_ufo: this.extra.offloadUfo,
      offload_csum: this.extra.offloadCsum,
    };
  }
}
