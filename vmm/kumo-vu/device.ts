import { GuestMemory } from '../../protocol/memory/index.js';
import { Epoll, EPOLLIN, EPOLLRDHUP } from '../../protocol/sys/epoll.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { VhostUserFrontend, ProtocolFeature, hasProtocolFeature } from '../../protocol/vhost-user/index.js';
import { compactLayout, DriverQueue, GuestAllocator, type UsedBuffer } from '../../protocol/virtqueue/index.js';
import { bit, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../protocol/virtio/index.js';
import { KumoVuError } from './errors.js';

/** Where kumo-vu's "guest" RAM starts (any non-zero address works; 1 MiB keeps 0 an obviously bad address). */
const GUEST_BASE = 0x10_0000;
const PAGE = 4096;
const INDIRECT_POOL = 256 * 1024;
/** epoll token of the vhost-user socket in a wait that watches for the back-end going away (queue tokens are their indexes). */
export const HANGUP_TOKEN = 0xffff;

/** What a wait reports when the back-end went away meanwhile. */
export function disconnected(context: Record<string, unknown>): KumoVuError {
  return new KumoVuError('the vhost-user back-end disconnected', context);
}

/** One driver-side ring: the queue, its kick eventfd (we write) and call eventfd (the back-end writes). */
export class VuQueue {
  constructor(
    readonly index: number,
    readonly dq: DriverQueue<number>,
    readonly kickFd: number,
    readonly callFd: number,
  ) {}

  /** Publishes what was added and kicks the back-end if it asked for kicks. */
  kick(): void {
    this.dq.publish();
    if (this.dq.kickNeeded()) eventfdWrite(this.kickFd);
  }
}

export interface ConnectOptions {
  socket: string;
  /** Virtio features kumo-vu wants (intersected with the offer). */
  features: bigint;
  protocolFeatures: bigint;
  connectTimeoutMs?: number;
}

/**
 * A vhost-user device driven from userspace: the front-end connection, memfd-backed "guest" RAM that the
 * back-end maps, and driver queues with eventfd kick/call.
 */
export class VuDevice {
  mem: GuestMemory | null = null;
  alloc: GuestAllocator | null = null;
  queues: VuQueue[] = [];
  private readonly epoll = new Epoll(64);

  private constructor(
    readonly frontend: VhostUserFrontend,
    readonly offered: bigint,
    readonly features: bigint,
    readonly protocolFeatures: bigint,
    /** GET_QUEUE_NUM (1 without protocol MQ). */
    readonly maxQueues: number,
  ) {}

  static async connect(o: ConnectOptions): Promise<VuDevice> {
    const fe = await VhostUserFrontend.connect(o.socket, { retryForMs: o.connectTimeoutMs ?? 0 });
    try {
      const n = fe.negotiate(o.features, o.protocolFeatures);
      const maxQueues = hasProtocolFeature(n.protocolFeatures, ProtocolFeature.MQ) ? fe.getQueueNum() : 1;
      return new VuDevice(fe, n.offered, n.features, n.protocolFeatures, maxQueues);
    } catch (e) {
      fe.close();
      throw e;
    }
  }

  has(featureBit: number): boolean {
    return (this.features & bit(featureBit)) !== 0n;
  }

  /** GET_CONFIG, or null when the CONFIG protocol feature was not negotiated. */
  readConfig(size: number): Uint8Array | null {
    if (!hasProtocolFeature(this.protocolFeatures, ProtocolFeature.CONFIG)) return null;
    return this.frontend.getConfig(0, size);
  }

  /**
   * Creates RAM (rings + dataBytes for the caller's buffers), sends the memory table, sets up and enables the rings.
   * `why`: what the queues are for, said when the back-end has fewer (the wrong kind of back-end, most likely).
   */
  start(numQueues: number, queueSize: number, dataBytes: number, why = ''): void {
    if (numQueues < 1 || numQueues > this.maxQueues) {
      const more = why ? `${numQueues} needed (${why}): is it the right kind of back-end?` : `${numQueues} asked for`;
      throw new KumoVuError(`the back-end serves ${this.maxQueues} queue(s), ${more}`, { numQueues, max: this.maxQueues });
    }
    const ringBytes = compactLayout(0, queueSize).end;
    const indirect = this.has(VIRTIO_RING_F_INDIRECT_DESC);
    const perQueue = align(ringBytes, PAGE) + (indirect ? INDIRECT_POOL : 0);
    const size = align(perQueue * numQueues + dataBytes + PAGE, 2 << 20);
    const mem = GuestMemory.anonymous([{ guestAddr: GUEST_BASE, size }]);
    this.mem = mem;
    const alloc = new GuestAllocator(GUEST_BASE, size);
    this.alloc = alloc;
    this.frontend.setMemTable(mem);
    const eventIdx = this.has(VIRTIO_RING_F_EVENT_IDX);
    for (let i = 0; i < numQueues; i++) {
      const base = alloc.allocOrThrow(ringBytes, PAGE);
      const layout = compactLayout(base, queueSize);
      const indirectPool = indirect ? new GuestAllocator(alloc.allocOrThrow(INDIRECT_POOL, PAGE), INDIRECT_POOL) : undefined;
      const dq = new DriverQueue<number>(mem, layout, { eventIdx, indirect: indirectPool });
      const kickFd = eventfd();
      const callFd = eventfd();
      this.queues.push(new VuQueue(i, dq, kickFd, callFd));
      this.epoll.add(callFd, EPOLLIN, i);
      this.frontend.setupVring(i, mem, layout, kickFd, callFd, 0);
    }
    // A back-end that goes away wakes waitUsed() at once instead of after its timeout.
    this.watchHangup(this.epoll);
  }

  /** Makes `ep` report HANGUP_TOKEN when the back-end closes the connection. */
  watchHangup(ep: Epoll): void {
    ep.add(this.frontend.channel.fd, EPOLLRDHUP, HANGUP_TOKEN);
  }

  /** Allocates a guest buffer from the data area. */
  buffer(size: number, align = 512): number {
    if (this.alloc === null) throw new KumoVuError('device not started');
    return this.alloc.allocOrThrow(size, align);
  }

  /**
   * Waits until queue q has used buffers and returns them (blocking, at most timeoutMs in total).
   * Used by simple request/response flows (verify); the benchmark has its own loop.
   */
  waitUsed(q: VuQueue, timeoutMs: number): UsedBuffer<number>[] {
    const deadline = Date.now() + timeoutMs;
    let hungUp = false;
    for (;;) {
      const used = q.dq.takeUsed();
      if (used.length > 0) return used;
      if (hungUp) throw disconnected({ queue: q.index });
      const left = deadline - Date.now();
      if (left <= 0) throw new KumoVuError('timed out waiting for the device', { queue: q.index, timeoutMs });
      const n = this.epoll.wait(Math.min(left, 100));
      for (let k = 0; k < n; k++) if (this.epoll.tokens[k] === HANGUP_TOKEN) hungUp = true;
      eventfdRead(q.callFd);
    }
  }

  /** Stops every ring (GET_VRING_BASE), closes the connection and releases memory and eventfds. */
  close(): void {
    for (const q of this.queues) {
      try {
        this.frontend.getVringBase(q.index);
      } catch {
        // The back-end is gone or not answering: closing is best effort, and each further try would wait as long.
        break;
      }
    }
    this.frontend.close();
    for (const q of this.queues) {
      closeQuiet(q.kickFd);
      closeQuiet(q.callFd);
    }
    this.queues = [];
    this.epoll.close();
    this.mem?.close();
    this.mem = null;
  }
}

export function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}
