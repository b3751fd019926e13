// Main-thread side of one vhost-user device: the connection to its backend, and what DRIVER_OK,
// reset and guest config writes turn into on the wire.
import { logger, WarnLimiter } from '../../protocol/log.js';
import { closeQuiet, eventfdRead } from '../../protocol/sys/fd.js';
import { F_PROTOCOL_FEATURES, VhostUserFrontend } from '../../protocol/vhost-user/index.js';
import type { QueueActivation } from '../devices/types.js';
import type { ActivateContext } from '../virtio/device.js';
import type { EventLoop } from '../virtio/event-loop.js';
import { VhostUserDeviceError } from './errors.js';
import { DIRTY_ASKED, DIRTY_DONE, DIRTY_NONE_LO, type VhostUserDeviceSpec } from './spec.js';

const log = logger('vhost-user-device');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);

/** The eventfd KVM injects a GSI from (its irqfd); the backend writes it directly as the vring call fd. */
export type CallFdResolver = (gsi: number) => number;

export class VhostUserLink {
  private readonly queueGsis = new Map<number, number | null>();
  private active: number[] = [];
  private loopAttached = false;
  private readonly cfg: Uint8Array;
  private readonly dirty: Int32Array;

  constructor(
    readonly spec: VhostUserDeviceSpec,
    readonly frontend: VhostUserFrontend,
    /** Everything the backend offered in GET_FEATURES (bit 30 included). */
    readonly backendFeatures: bigint,
    readonly protocolFeatures: bigint,
    private readonly callFd: CallFdResolver,
  ) {
    this.cfg = new Uint8Array(spec.config);
    this.dirty = new Int32Array(spec.dirty);
  }

  get activeQueues(): readonly number[] {
    return this.active;
  }

  /** The transport's activation event carries each queue's MSI GSI; ActiveQueue does not. */
  noteQueues(queues: readonly QueueActivation[]): void {
    this.queueGsis.clear();
    for (const q of queues) this.queueGsis.set(q.index, q.gsi);
  }

  /**
   * Sends the vCPUs' config writes from `loop`. From before the guest runs: a driver may write config before
   * DRIVER_OK, and its vCPU waits until the back-end has the bytes.
   */
  attach(loop: EventLoop): void {
    if (this.loopAttached) return;
    loop.add(this.spec.configEventFd, () => {
      eventfdRead(this.spec.configEventFd);
      this.flushConfig();
    });
    this.loopAttached = true;
  }

  activate(ctx: ActivateContext): void {
    const fe = this.frontend;
    this.attach(ctx.loop);
    this.stopRings();
    const features = (ctx.features & this.backendFeatures) | (this.backendFeatures & F_PROTOCOL_FEATURES);
    fe.setFeatures(features);
    fe.setMemTable(ctx.memory);
    this.flushConfig();
    for (const q of ctx.queues) {
      const gsi = this.queueGsis.get(q.index) ?? null;
      const call = gsi === null ? null : this.callFd(gsi);
      fe.setupVring(q.index, ctx.memory, q.layout, q.kick, call, 0);
      this.active.push(q.index);
    }
    guestLog.info({ id: this.spec.id, features: features.toString(16), queues: this.active }, 'vhost-user device started');
  }

  /** Stops every started ring (SET_VRING_ENABLE 0, then GET_VRING_BASE, as Cloud Hypervisor resets). */
  reset(): void {
    try {
      this.stopRings();
    } catch (err) {
      log.error({ err, id: this.spec.id }, 'vhost-user reset failed');
    }
  }

  private stopRings(): void {
    const fe = this.frontend;
    const queues = this.active;
    this.active = [];
    for (const q of queues) {
      if (fe.features & F_PROTOCOL_FEATURES) fe.setVringEnable(q, false);
      const base = fe.getVringBase(q);
      log.debug({ id: this.spec.id, queue: q, base }, 'ring stopped');
    }
  }

  /** Sends the config bytes the guest wrote since the last flush (SET_CONFIG). */
  flushConfig(): void {
    // Every vCPU write counted before the range is taken is in it: those vCPUs may go on once it is sent.
    const asked = Atomics.load(this.dirty, DIRTY_ASKED);
    const lo = Atomics.exchange(this.dirty, 0, DIRTY_NONE_LO);
    const hi = Atomics.exchange(this.dirty, 1, 0);
    try {
      if (lo < hi) this.frontend.setConfig(lo, this.cfg.slice(lo, hi));
    } catch (err) {
      log.error({ err, id: this.spec.id, offset: lo, len: hi - lo }, 'SET_CONFIG failed');
    } finally {
      Atomics.store(this.dirty, DIRTY_DONE, asked);
      Atomics.notify(this.dirty, DIRTY_DONE);
    }
  }

  close(): void {
    this.frontend.close();
    closeQuiet(this.spec.configEventFd);
  }
}

export function checkQueueCount(id: string, want: number, backend: number): void {
  if (want > backend) {
    throw new VhostUserDeviceError(`vhost-user device ${id}: the backend serves ${backend} queues, ${want} requested`, {
      id,
      want,
      backend,
    });
  }
}
