import type { Logger } from '../log.js';
import type { GuestMemory } from '../memory/index.js';
import type { Epoll } from '../sys/epoll.js';
import type { HelperConfinement } from '../sys/helper-thread.js';
import type { DeviceQueue } from '../virtqueue/index.js';

/** What a device back-end (blk, net, fs) gives the daemon; lives on the daemon's main thread. */
export interface VhostUserBackend {
  readonly numQueues: number;
  /** Largest SET_VRING_NUM accepted (power of two). */
  readonly maxQueueSize: number;
  /** Virtio feature bits offered; the daemon adds VHOST_USER_F_PROTOCOL_FEATURES (bit 30). */
  features(): bigint;
  /** Protocol feature bits offered; the daemon drops bits it cannot serve (see SUPPORTED_PROTOCOL_FEATURES). */
  protocolFeatures(): bigint;
  getConfig(offset: number, size: number): Uint8Array;
  /** Absent: SET_CONFIG is refused. Throwing refuses it too (the front-end gets a NACK if it asked for one). */
  setConfig?(offset: number, data: Uint8Array): void;
  ackFeatures?(features: bigint): void;
  /**
   * The front-end sent RESET_OWNER/RESET_DEVICE: driver-written state (config fields) goes back to its defaults here,
   * not on SET_FEATURES, which front-ends send again at every start, and not when a front-end connects (a reconnecting
   * front-end does not write the config again).
   */
  reset?(): void;
  /**
   * Driver-written state (at most DEVICE_STATE_MAX bytes) kept in the front-end's inflight buffer (INFLIGHT_SHMFD):
   * QEMU reconnecting to a restarted back-end hands the buffer back but never writes the config again, while the guest
   * still believes what it wrote. Saved after SET_CONFIG and RESET_*, and into every new buffer.
   */
  saveState?(): Uint8Array;
  /** The state a back-end saved into the buffer a front-end handed back (SET_INFLIGHT_FD); written by the front-end's side too: validate. */
  restoreState?(saved: Uint8Array): void;
  /**
   * Module (absolute path or file: URL) exporting `createQueueHandler: CreateQueueHandler`; `data` is structured-cloned.
   * `signalHelper`: each worker writes its call fds through a helper thread (see SignalHelper), confined as it says.
   */
  queueWorker: { module: string; data: unknown; signalHelper?: SignalHelperOptions };
  /** Rings served by one worker thread: 1 (blk, fs) or 2 (net rx/tx pair). Default 1. */
  queuesPerWorker?: number;
}

/** A queue worker's signal helper. `confine`: how it confines itself (a sandboxed worker's helper gives up what the worker did). */
export interface SignalHelperOptions {
  confine: HelperConfinement;
}

/** Exported as `createQueueHandler` by the queue worker module; called once per worker thread. */
export type CreateQueueHandler = (ctx: QueueWorkerContext) => QueueHandler;

export interface QueueWorkerContext {
  data: unknown;
  /** Current guest memory (changes on SET_MEM_TABLE / ADD/REM_MEM_REG: do not cache it across calls). */
  memory(): GuestMemory;
  /** The worker's epoll; handler-owned fds must use tokens >= HANDLER_TOKEN_BASE. */
  epoll: Epoll;
  log: Logger;
  workerIndex: number;
  /** Negotiated virtio features (valid once a ring starts). */
  features(): bigint;
}

export interface QueueHandler {
  onStart(q: VringHandle): void;
  /**
   * `byFrontEnd`: the front-end stopped the ring (GET_VRING_BASE: QEMU's stop, a device reset, an unplug) or the
   * device went; false when the back-end stops it only to apply a change to the running ring and starts it again.
   */
  onStop(q: VringHandle, byFrontEnd: boolean): void;
  /** The kick fd fired (already drained) or the ring was enabled: pop, handle, push, publish, notify. */
  process(q: VringHandle): void;
  /** SET_VRING_ENABLE 0 on a started ring, before the front-end hears back (enables go through process()). */
  onDisable?(q: VringHandle): void;
  /** An fd the handler added to ctx.epoll became ready. */
  onFd?(token: number, events: number): void;
  /**
   * Quiesce: called before the guest memory changes (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) while rings
   * run. Blocks until no request of this worker's rings is in flight anywhere (io_uring, other threads),
   * with every finished request pushed, published and notified. After it returns the daemon swaps each
   * ring's queue and ctx.memory() and unmaps the old table, then calls process() on every enabled ring.
   * Handlers that finish every request inside process()/onFd() need not implement it.
   */
  drain?(): void;
  /** The worker is exiting (rings already stopped): release handler-owned fds, rings and threads. */
  close?(): void;
}

export interface VringHandle {
  readonly index: number;
  readonly queue: DeviceQueue;
  /** Disabled rings are started but not processed (SET_VRING_ENABLE 0). */
  readonly enabled: boolean;
  /** Signals the call eventfd if the driver wants an interrupt (call after queue.publishUsed()). */
  notify(): void;
}

/** Epoll tokens below this are the daemon's (ring kicks, control). */
export const HANDLER_TOKEN_BASE = 0x1_0000;
