// --disk (Cloud Hypervisor syntax). kumo attaches vhost-user disks only; images are served by a backend.
import { bool, describeSyntax, int, parseOptions, str, custom } from '../../protocol/config/options.js';
import { ConfigError } from './errors.js';
import {
  checkPciPlacement, checkQueueSize, PCI_KEYS, RATE_LIMIT_KEYS, refuseRateLimits, requireSocket,
} from './vhost-user-common.js';

const imageType = custom<string>('raw|qcow2|vhd|vhdx', (v) => (['raw', 'qcow2', 'vhd', 'vhdx'].includes(v) ? v : null), (v) => v);

const schema = {
  path: str({ hint: '<disk_image_path>' }),
  readonly: bool(false),
  direct: bool(false),
  iommu: bool(false),
  num_queues: int({ default: 1, min: 1, max: 256 }),
  queue_size: int({ default: 128, min: 1, max: 32768 }),
  vhost_user: bool(false),
  socket: str({ hint: '<vhost_user_socket_path>' }),
  ...RATE_LIMIT_KEYS,
  rate_limit_group: str({ hint: '<group_id>' }),
  serial: str({ hint: '<serial_number>' }),
  image_type: imageType,
  sparse: bool(true),
  backing_files: bool(false),
  ...PCI_KEYS,
};

export interface DiskJson {
  path: string | null;
  readonly: boolean;
  direct: boolean;
  iommu: boolean;
  num_queues: number;
  queue_size: number;
  vhost_user: boolean;
  vhost_socket: string | null;
  id: string | null;
  pci_segment: number;
  pci_device_id: number | null;
  serial: string | null;
}

/** One --disk: only `vhost_user=on,socket=...` disks can be attached by kumo. */
export class DiskConfig {
  static readonly SYNTAX = `--disk ${describeSyntax(schema)}`;

  id: string | null;
  /** The PCI slot the device asks for (pci_device_id); null: the next free one. */
  pciDeviceId: number | null = null;

  constructor(
    readonly socket: string,
    readonly numQueues = 1,
    readonly queueSize = 128,
    id: string | null = null,
    readonly extra: { readonly: boolean; direct: boolean; serial: string | null; pciSegment: number } = {
      readonly: false, direct: false, serial: null, pciSegment: 0,
    },
  ) {
    this.id = id;
  }

  static parse(s: string): DiskConfig {
    const what = '--disk';
    const o = parseOptions(s, schema, { what, syntax: DiskConfig.SYNTAX });
    if (o.path !== undefined && o.socket !== undefined) {
      throw new ConfigError(`${what}: path= and socket= are mutually exclusive (the backend opens the image)`, { path: o.path, socket: o.socket });
    }
    if (!o.vhost_user) {
      if (o.path !== undefined) {
        throw new ConfigError(
          `${what}: not supported: kumo attaches vhost-user disks only; serve the image with ` +
            `kumo-vhost-user-blk --block-backend path=${o.path},socket=<sock> and pass --disk vhost_user=on,socket=<sock>`,
          { path: o.path },
        );
      }
      if (o.socket !== undefined) throw new ConfigError(`${what}: socket= needs vhost_user=on`, { socket: o.socket });
      throw new ConfigError(`${what}: missing vhost_user=on,socket=<vhost_user_socket_path>`, {});
    }
    if (o.iommu) throw new ConfigError(`${what}: iommu=on is not supported by kumo`, {});
    refuseRateLimits(what, o);
    const c = new DiskConfig(requireSocket(what, o.socket), o.num_queues, o.queue_size, o.id ?? null, {
      readonly: o.readonly, direct: o.direct, serial: o.serial ?? null, pciSegment: o.pci_segment ?? 0,
    });
    c.pciDeviceId = o.pci_device_id ?? null;
    c.validate();
    return c;
  }

  validate(): void {
    requireSocket('--disk', this.socket);
    checkQueueSize('--disk', this.queueSize);
    if (!Number.isInteger(this.numQueues) || this.numQueues < 1 || this.numQueues > 256) {
      throw new ConfigError(`--disk: num_queues must be between 1 and 256, got ${this.numQueues}`, { num_queues: this.numQueues });
    }
    checkPciPlacement('--disk', this.extra.pciSegment, this.pciDeviceId);
  }

  toJSON(): DiskJson {
    return {
      path: null,
      readonly: this.extra.readonly,
      direct: this.extra.direct,
      iommu: false,
      num_queues: this.numQueues,
      queue_size: this.queueSize,
      vhost_user: true,
      vhost_socket: this.socket,
      id: this.id,
      pci_segment: this.extra.pciSegment,
      pci_device_id: this.pciDeviceId,
      serial: this.extra.serial,
    };
  }
}
