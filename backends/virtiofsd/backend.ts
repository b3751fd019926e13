import type { SignalHelperOptions, VhostUserBackend } from '../../protocol/vhost-user/backend-types.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/messages.js';
import { bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../protocol/virtio/features.js';
import { encodeFsConfig, FS_CONFIG_SIZE } from '../../protocol/virtio/fs.js';
import type { FsOptions } from './options.js';
import type { FsWorkerData } from './queue-worker.js';
import { siblingWorkerModule } from '../../protocol/vhost-user/worker-module.js';

/** Default busy-poll window of the request loop (see queue-worker.ts). */
export const DEFAULT_POLL_US = 50;

/** virtio-fs over vhost-user: queue 0 hiprio, queue 1 the one request queue (like virtiofsd). */
export class VirtioFsBackend implements VhostUserBackend {
  readonly numQueues = 2;
  readonly maxQueueSize = 32768;
  readonly queuesPerWorker = 2;
  readonly queueWorker: { module: string; data: FsWorkerData; signalHelper: SignalHelperOptions };

  constructor(
    opts: FsOptions,
    private readonly tag: string | null,
    worker: Partial<Omit<FsWorkerData, 'opts'>> = {},
  ) {
    const data: FsWorkerData = { opts, pollUs: DEFAULT_POLL_US, threadPoolSize: null, seccomp: 'none', capabilities: null, ...worker };
    // Waking the driver is a fifth of the request thread's time at depth 8: a helper thread takes it (see SignalHelper).
    // It has no capabilities and, like the request thread, the --seccomp action for a call outside its short list.
    this.queueWorker = { module: siblingWorkerModule(import.meta.url, 'queue-worker'), data, signalHelper: { confine: data.seccomp } };
  }

  features(): bigint {
    return bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX);
  }

  protocolFeatures(): bigint {
    const p = protocolFeatures(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS);
    // Like virtiofsd, offer CONFIG only with --tag (QEMU 7.1-8.0 mishandle it otherwise).
    return this.tag === null ? p : p | protocolFeatures(ProtocolFeature.CONFIG);
  }

  getConfig(offset: number, size: number): Uint8Array {
    const cfg = this.tag === null ? new Uint8Array(FS_CONFIG_SIZE) : encodeFsConfig(this.tag, 1);
    const out = new Uint8Array(size);
    if (offset < cfg.length) out.set(cfg.subarray(offset, Math.min(cfg.length, offset + size)));
    return out;
  }
}
