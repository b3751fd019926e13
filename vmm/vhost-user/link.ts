// Main-thread side of one vhost-user device: the connection to its backend, and what DRIVER_OK,
// reset and guest config writes turn into on the wire.
import { logger, WarnLimiter } from '../../protocol/log.js';
import { closeQuiet, dup, eventfdRead } from '../../protocol/sys/fd.js';
import { peekState } from '../../protocol/sys/socket.js';
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
  private unwatch: (() => void) | null = null;
  /** The back-end hung up: nothing is sent to it any more (the guest, told NEEDS_RESET, may go on writing config). */
  private lost = false;
  private readonly cfg: Uint8Array;
  private readonly dirty: Int32Array;

  constructor(
    readonly spec: VhostUserDeviceSpec,
    readonly frontend: VhostUserFrontend,
    /** Everything the backend offered in GET_FEATURES (bit 30 included). */
    readonly backendFeatures: bigint,
    readonly protocolFeatures: bigint,
    private readonly callFd: CallFdResolver,
    /** The back-end's socket path, for what the logs say. */
    readonly socket = '',
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
   * DRIVER_OK, and its vCPU waits until the back-end has the bytes. It also watches the connection: a back-end that
   * goes away while the guest runs is said, and `onLost` runs (the transport tells the guest its device needs a reset).
   */
  attach(loop: EventLoop, onLost?: () => void): void {
    if (this.loopAttached) return;
    loop.add(this.spec.configEventFd, () => {
      eventfdRead(this.spec.configEventFd);
      this.flushConfig();
    });
    this.loopAttached = true;
    // A dup of our own: the channel may close its fd (and the number be reused) while the loop still watches.
    const watch = dup(this.frontend.channel.fd);
    this.unwatch = () => {
      this.unwatch = null;
      loop.remove(watch);
      closeQuiet(watch);
    };
    loop.add(watch, () => {
      // Only replies travel on this socket, read while their request waits: the readiness may be a reply read since
      // (stale), a hang-up, or a reply that came after its request gave up (the next request skips it).
      const state = this.frontend.channel.isClosed ? 'closed' : peekState(watch);
      if (state === 'empty') return;
      this.unwatch?.();
      if (state === 'data') {
        log.debug({ id: this.spec.id }, 'a reply came after its request gave up; the connection is no longer watched');
        return;
      }
      this.lost = true;
      log.error({ id: this.spec.id, socket: this.socket }, 'the vhost-user back-end closed the connection; the guest is told the device needs a reset');
      onLost?.();
    });
  }

  activate(ctx: ActivateContext): void {
    const fe = this.frontend;
    this.attach(ctx.loop);
    if (this.lost) throw new VhostUserDeviceError(`vhost-user device ${this.spec.id}: its back-end on ${this.socket} is gone (kumo does not reconnect)`, { id: this.spec.id });
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
    if (this.lost) {
      this.active = [];
      return;
    }
    try {
      this.stopRings();
    } catch (err) {
      guestLog.error({ err: (err as Error).message, id: this.spec.id }, 'vhost-user reset failed');
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
      if (lo < hi && !this.lost) this.frontend.setConfig(lo, this.cfg.slice(lo, hi));
    } catch (err) {
      guestLog.error({ err: (err as Error).message, id: this.spec.id, offset: lo, len: hi - lo }, 'SET_CONFIG failed');
    } finally {
      Atomics.store(this.dirty, DIRTY_DONE, asked);
      Atomics.notify(this.dirty, DIRTY_DONE);
    }
  }

  close(): void {
    this.unwatch?.();
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
