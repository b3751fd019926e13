// --fs (Cloud Hypervisor syntax): a virtio-fs device served by a vhost-user backend (virtiofsd).
import { describeSyntax, int, parseOptions, str } from '../../protocol/config/options.js';
import { FS_TAG_SIZE } from '../../protocol/virtio/fs.js';
import { ConfigError } from './errors.js';
import { checkPciPlacement, checkQueueSize, PCI_KEYS } from './vhost-user-common.js';

const schema = {
  tag: str({ required: true, hint: '<tag_name>' }),
  socket: str({ required: true, hint: '<socket_path>' }),
  num_queues: int({ default: 1, min: 1, max: 255 }),
  queue_size: int({ default: 1024, min: 1, max: 32768 }),
  ...PCI_KEYS,
};

export interface FsJson {
  tag: string;
  socket: string;
  num_queues: number;
  queue_size: number;
  id: string | null;
  pci_segment: number;
  pci_device_id: number | null;
}

/** One --fs: tag (≤ 36 bytes), socket, num_queues request queues (the device adds the hiprio queue). */
export class FsConfig {
  static readonly SYNTAX = `--fs ${describeSyntax(schema)}`;

  id: string | null;
  /** The PCI slot the device asks for (pci_device_id); null: the next free one. */
  pciDeviceId: number | null = null;

  constructor(
    readonly tag: string,
    readonly socket: string,
    readonly numQueues = 1,
    readonly queueSize = 1024,
    id: string | null = null,
    readonly pciSegment = 0,
  ) {
    this.id = id;
  }

  static parse(s: string): FsConfig {
    const o = parseOptions(s, schema, { what: '--fs', syntax: FsConfig.SYNTAX });
    const c = new FsConfig(o.tag, o.socket, o.num_queues, o.queue_size, o.id ?? null, o.pci_segment ?? 0);
    c.pciDeviceId = o.pci_device_id ?? null;
    c.validate();
    return c;
  }

  validate(): void {
    const len = new TextEncoder().encode(this.tag).length;
    if (len === 0 || len > FS_TAG_SIZE) {
      throw new ConfigError(`--fs: tag must be 1 to ${FS_TAG_SIZE} bytes, "${this.tag}" is ${len}`, { tag: this.tag });
    }
    if (this.socket === '') throw new ConfigError('--fs: socket must not be empty', {});
    if (!Number.isInteger(this.numQueues) || this.numQueues < 1 || this.numQueues > 255) {
      throw new ConfigError(`--fs: num_queues must be between 1 and 255, got ${this.numQueues}`, { num_queues: this.numQueues });
    }
    checkQueueSize('--fs', this.queueSize);
    checkPciPlacement('--fs', this.pciSegment, this.pciDeviceId);
  }

  toJSON(): FsJson {
    return {
      tag: this.tag,
      socket: this.socket,
      num_queues: this.numQueues,
      queue_size: this.queueSize,
      id: this.id,
      pci_segment: this.pciSegment,
      pci_device_id: this.pciDeviceId,
    };
  }
}
