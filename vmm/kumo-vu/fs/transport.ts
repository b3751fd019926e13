import { bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../../protocol/virtio/features.js';
import { protocolFeatures, ProtocolFeature } from '../../../protocol/vhost-user/index.js';
import type { FuseTransport } from '../../../protocol/fuse/index.js';
import { KumoVuError } from '../errors.js';
import { VuDevice, type VuQueue } from '../device.js';

const SLOT = (1 << 20) + 8192;
const TIMEOUT_MS = 30_000;

/**
 * FUSE over virtio-fs queues from userspace: queue 0 (hiprio) for FORGET/INTERRUPT, queue 1 for
 * the rest. One request in flight per call; the device's reply is read back from "guest" memory.
 */
export class VirtioFsTransport implements FuseTransport {
  private readonly reqAddr: number;
  private readonly repAddr: number;

  private constructor(readonly dev: VuDevice) {
    this.reqAddr = dev.buffer(SLOT, 4096);
    this.repAddr = dev.buffer(SLOT, 4096);
  }

  static async connect(socket: string, connectTimeoutMs = 0, queueSize = 256): Promise<VirtioFsTransport> {
    const dev = await VuDevice.connect({
      socket,
      features: bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC),
      protocolFeatures: protocolFeatures(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS),
      connectTimeoutMs,
    });
    try {
      dev.start(2, queueSize, 2 * SLOT + (8 << 20));
      return new VirtioFsTransport(dev);
    } catch (e) {
      dev.close();
      throw e;
    }
  }

  get mem() {
    const m = this.dev.mem;
    if (m === null) throw new KumoVuError('device not started');
    return m;
  }

  async call(request: Uint8Array, replySize: number, hiprio = false): Promise<Uint8Array> {
    if (request.length > SLOT || replySize > SLOT) throw new KumoVuError('FUSE request too large', { len: request.length, replySize });
    const q: VuQueue = this.dev.queues[hiprio ? 0 : 1];
    this.mem.write(this.reqAddr, request);
    const head = q.dq.add([{ addr: this.reqAddr, len: request.length }], replySize > 0 ? [{ addr: this.repAddr, len: replySize }] : [], 0);
    if (head === null) throw new KumoVuError('virtqueue full');
    q.kick();
    const used = this.dev.waitUsed(q, TIMEOUT_MS);
    const len = Math.min(used[0].len, replySize);
    const out = new Uint8Array(len);
    if (len > 0) this.mem.read(this.repAddr, out);
    return out;
  }

  close(): void {
    this.dev.close();
  }
}
