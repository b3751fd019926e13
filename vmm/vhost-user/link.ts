// Main-thread side of one vhost-user device: the connection to its backend, and what DRIVER_OK,
// reset and guest config writes turn into on the wire.
import { setTimeout as sleep } from 'node:timers/promises';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { closeQuiet, dup, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { peekState } from '../../protocol/sys/socket.js';
import { F_PROTOCOL_FEATURES, hasProtocolFeature, ProtocolFeature, VhostUserFrontend } from '../../protocol/vhost-user/index.js';
import type { PayloadOf } from '../../protocol/vhost-user/payload.js';
import type { QueueActivation } from '../devices/types.js';
import type { ActivateContext } from '../virtio/device.js';
import type { EventLoop } from '../virtio/event-loop.js';
import { VhostUserDeviceError } from './errors.js';
import { DIRTY_ASKED, DIRTY_DONE, DIRTY_NONE_LO, type VhostUserDeviceSpec } from './spec.js';

const log = logger('vhost-user-device');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);
/** A back-end that hangs up again and again after each reconnect: its lines are rate-limited, and so are the reconnects. */
const backendLog = new WarnLimiter(log);
const RECONNECT_MIN_INTERVAL_MS = 1000;

/** The eventfd KVM injects a GSI from (its irqfd); the backend writes it directly as the vring call fd. */
export type CallFdResolver = (gsi: number) => number;

/** A back-end connection negotiated as at attach time: what GET_FEATURES and the protocol negotiation gave. */
export interface NegotiatedLink {
  fe: VhostUserFrontend;
  backendFeatures: bigint;
  protocol: bigint;
}

/** Connects to the device's back-end again (waiting for one to appear) and negotiates it: Cloud Hypervisor's reconnect. */
export type Reconnect = () => Promise<NegotiatedLink>;

export class VhostUserLink {
  private readonly queueGsis = new Map<number, number | null>();
  private active: number[] = [];
  private loopAttached = false;
  private unwatch: (() => void) | null = null;
  /** The back-end hung up: nothing is sent to it any more (the guest, told NEEDS_RESET, may go on writing config). */
  private lost = false;
  /** The back-end hung up and a new connection to it is being made (see connectionLost). */
  private reconnecting = false;
  private closed = false;
  /** When the last reconnect began: a back-end that keeps hanging up is reconnected to at most once a second. */
  private lastReconnect = -Infinity;
  private loop: EventLoop | null = null;
  private onLost: (() => void) | null = null;
  /** What the running activation set up, replayed on a new connection; null while the device is not started. */
  private started: { ctx: ActivateContext; features: bigint } | null = null;
  /** INFLIGHT_SHMFD: the back-end's buffer, kept for the next back-end (as QEMU keeps it) until the device resets. */
  private inflight: { buffer: PayloadOf<'inflight'>; fd: number } | null = null;
  private readonly cfg: Uint8Array;
  private readonly dirty: Int32Array;

  constructor(
    readonly spec: VhostUserDeviceSpec,
    public frontend: VhostUserFrontend,
    /** Everything the backend offered in GET_FEATURES (bit 30 included). */
    public backendFeatures: bigint,
    public protocolFeatures: bigint,
    private readonly callFd: CallFdResolver,
    /** The back-end's socket path, for what the logs say. */
    readonly socket = '',
    /** How to reach a restarted back-end; null: a back-end that hangs up is gone for good (virtio-fs: its FUSE state is). */
    private readonly reconnect: Reconnect | null = null,
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
   * goes away while the guest runs is connected to again when it comes back (blk, net); when it does not, or cannot
   * be, `onLost` runs (the transport tells the guest its device needs a reset).
   */
  attach(loop: EventLoop, onLost?: () => void): void {
    if (onLost) this.onLost = onLost;
    if (this.loopAttached) return;
    loop.add(this.spec.configEventFd, () => {
      eventfdRead(this.spec.configEventFd);
      this.flushConfig();
    });
    this.loopAttached = true;
    this.loop = loop;
    this.watchConnection();
  }

  private watchConnection(): void {
    const loop = this.loop;
    if (loop === null) return;
    const fe = this.frontend;
    // A dup of our own: the channel may close its fd (and the number be reused) while the loop still watches.
    const watch = dup(fe.channel.fd);
    this.unwatch = () => {
      this.unwatch = null;
      loop.remove(watch);
      closeQuiet(watch);
    };
    loop.add(watch, () => {
      // Only replies travel on this socket, read while their request waits: the readiness may be a reply read since
      // (stale), a hang-up, or a reply that came after its request gave up (the next request skips it).
      const state = fe.channel.isClosed ? 'closed' : peekState(watch);
      if (state === 'empty') return;
      this.unwatch?.();
      if (state === 'data') {
        log.debug({ id: this.spec.id }, 'a reply came after its request gave up; the connection is no longer watched');
        return;
      }
      this.connectionLost();
    });
  }

  private connectionLost(): void {
    if (this.lost || this.closed) return;
    if (this.reconnect === null) {
      this.giveUp('the vhost-user back-end closed the connection; the guest is told the device needs a reset');
      return;
    }
    this.reconnecting = true;
    backendLog.warn({ id: this.spec.id, socket: this.socket, queues: this.active }, 'the vhost-user back-end closed the connection; waiting for it to come back');
    void this.reconnectNow(this.reconnect);
  }

  private async reconnectNow(reconnect: Reconnect): Promise<void> {
    let n: NegotiatedLink;
    try {
      const wait = this.lastReconnect + RECONNECT_MIN_INTERVAL_MS - performance.now();
      if (wait > 0) await sleep(wait);
      this.lastReconnect = performance.now();
      n = await reconnect();
    } catch (err) {
      this.reconnecting = false;
      if (this.closed) return;
      this.giveUp('the vhost-user back-end did not come back; the guest is told the device needs a reset', err);
      return;
    }
    if (this.closed) {
      this.reconnecting = false;
      n.fe.close();
      return;
    }
    try {
      this.adopt(n);
      this.replay();
      backendLog.info({ id: this.spec.id, socket: this.socket, queues: this.active }, 'reconnected to the vhost-user back-end');
    } catch (err) {
      this.giveUp('setting up the restarted vhost-user back-end failed; the guest is told the device needs a reset', err);
    } finally {
      this.reconnecting = false;
    }
  }

  /** Takes a new connection in place of the lost one, if its back-end can go on with what was negotiated. */
  private adopt(n: NegotiatedLink): void {
    // What the guest uses now, and what it was offered from the old back-end: a driver started later may ack any of it.
    const need = (this.started?.features ?? 0n) | (this.spec.features & this.backendFeatures);
    // INFLIGHT_SHMFD is a help, not a need: without it the restarted back-end resumes from the used index.
    const needProtocol = this.protocolFeatures & ~(1n << BigInt(ProtocolFeature.INFLIGHT_SHMFD));
    if ((n.backendFeatures & need) !== need || (n.protocol & needProtocol) !== needProtocol) {
      n.fe.close();
      throw new VhostUserDeviceError(`vhost-user device ${this.spec.id}: the restarted back-end offers less than the guest uses`, {
        id: this.spec.id, features: n.backendFeatures.toString(16), need: need.toString(16), protocol: n.protocol.toString(16),
      });
    }
    this.frontend.close();
    this.frontend = n.fe;
    this.backendFeatures = n.backendFeatures;
    this.protocolFeatures = n.protocol;
    this.watchConnection();
  }

  /**
   * Sets the running device up again on the new back-end, as QEMU does after a reconnect: features, the kept inflight
   * buffer, memory, the guest's config writes, and each ring from its used index (a back-end with the inflight buffer
   * resumes from its own record instead), then a kick for what the guest queued meanwhile.
   */
  private replay(): void {
    const s = this.started;
    const fe = this.frontend;
    if (s === null) {
      // A device not running now keeps the guest's config (its writethrough choice, read back at the next probe):
      // the new back-end must serve it too, and the next activation sends only later writes.
      this.replayConfig();
      return;
    }
    fe.setFeatures(s.features);
    // The kept buffer, or (a device the guest started while the back-end was away) a new one.
    this.setUpInflight(s.ctx);
    fe.setMemTable(s.ctx.memory);
    this.replayConfig();
    for (const q of s.ctx.queues) {
      if (!this.active.includes(q.index)) continue;
      const gsi = this.queueGsis.get(q.index) ?? null;
      const used = s.ctx.memory.readU16(q.layout.usedAddr + 2);
      fe.setupVring(q.index, s.ctx.memory, q.layout, q.kick, gsi === null ? null : this.callFd(gsi), used);
      eventfdWrite(q.kick);
    }
  }

  private replayConfig(): void {
    for (const [o, n] of this.spec.writable) this.frontend.setConfig(o, this.cfg.slice(o, o + n));
  }

  private giveUp(msg: string, err?: unknown): void {
    this.lost = true;
    // A back-end that took part of a replay must not go on serving rings the guest may reset and reuse, and its
    // hang-up must not start another reconnect (one a second, each giving up again): the connection ends here.
    this.unwatch?.();
    this.frontend.close();
    log.error({ id: this.spec.id, socket: this.socket, ...(err ? { err: (err as Error).message } : {}) }, msg);
    this.onLost?.();
  }

  activate(ctx: ActivateContext): void {
    this.attach(ctx.loop);
    if (this.lost) throw new VhostUserDeviceError(`vhost-user device ${this.spec.id}: its back-end on ${this.socket} is gone`, { id: this.spec.id });
    const features = (ctx.features & this.backendFeatures) | (this.backendFeatures & F_PROTOCOL_FEATURES);
    if (this.reconnecting) {
      // As QEMU does while its chardev is down: the device starts on the new connection (replay()), or the guest is
      // told NEEDS_RESET if none comes. Failing now would leave the guest (a reboot, a driver reload) with a dead disk.
      this.startLater(ctx, features);
      return;
    }
    try {
      this.startNow(ctx, features);
    } catch (err) {
      // The back-end hung up before the loop saw it (its socket is readable, not yet read): reconnect now, as if it had.
      if (this.reconnect === null || !this.hungUp()) throw err;
      this.startLater(ctx, features);
      this.unwatch?.();
      this.connectionLost();
    }
  }

  private startLater(ctx: ActivateContext, features: bigint): void {
    this.active = ctx.queues.map((q) => q.index);
    this.started = { ctx, features };
    guestLog.info({ id: this.spec.id, queues: this.active }, 'vhost-user device started by the guest while its back-end is away; set up once it is back');
  }

  private hungUp(): boolean {
    const ch = this.frontend.channel;
    return ch.isClosed || peekState(ch.fd) === 'closed';
  }

  private startNow(ctx: ActivateContext, features: bigint): void {
    const fe = this.frontend;
    this.stopRings();
    fe.setFeatures(features);
    this.setUpInflight(ctx);
    fe.setMemTable(ctx.memory);
    this.flushConfig();
    for (const q of ctx.queues) {
      const gsi = this.queueGsis.get(q.index) ?? null;
      const call = gsi === null ? null : this.callFd(gsi);
      fe.setupVring(q.index, ctx.memory, q.layout, q.kick, call, 0);
      this.active.push(q.index);
    }
    this.started = { ctx, features };
    guestLog.info({ id: this.spec.id, features: features.toString(16), queues: this.active }, 'vhost-user device started');
  }

  /**
   * With INFLIGHT_SHMFD, a buffer from the back-end (once per device start, as QEMU gets one after each reset) handed
   * back with SET_INFLIGHT_FD. It covers rings of one size: a driver that sized its queues differently goes without.
   */
  private setUpInflight(ctx: ActivateContext): void {
    if (!hasProtocolFeature(this.protocolFeatures, ProtocolFeature.INFLIGHT_SHMFD) || ctx.queues.length === 0) return;
    const size = ctx.queues[0].layout.size;
    if (ctx.queues.some((q) => q.layout.size !== size)) return;
    if (this.inflight === null) {
      const numQueues = Math.max(...ctx.queues.map((q) => q.index)) + 1;
      this.inflight = this.frontend.getInflightFd(numQueues, size);
    }
    this.frontend.setInflightFd(this.inflight.buffer, this.inflight.fd);
  }

  private dropInflight(): void {
    if (this.inflight !== null) closeQuiet(this.inflight.fd);
    this.inflight = null;
  }

  /** Stops every started ring (SET_VRING_ENABLE 0, then GET_VRING_BASE, as Cloud Hypervisor resets). */
  reset(): void {
    this.started = null;
    this.dropInflight();
    if (this.lost || this.reconnecting) {
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
      // While reconnecting the bytes stay in cfg: the new back-end gets every writable range (replay()).
      if (lo < hi && !this.lost && !this.reconnecting) this.frontend.setConfig(lo, this.cfg.slice(lo, hi));
    } catch (err) {
      guestLog.error({ err: (err as Error).message, id: this.spec.id, offset: lo, len: hi - lo }, 'SET_CONFIG failed');
    } finally {
      Atomics.store(this.dirty, DIRTY_DONE, asked);
      Atomics.notify(this.dirty, DIRTY_DONE);
    }
  }

  close(): void {
    this.closed = true;
    this.unwatch?.();
    this.frontend.close();
    this.dropInflight();
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
