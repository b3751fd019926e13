import type { MessagePort } from 'node:worker_threads';
import type { MemoryRegionSpec } from '../memory/index.js';
import type { QueueLayout } from '../virtqueue/index.js';
import type { SignalHelperOptions } from './backend-types.js';

/** workerData of a queue worker thread. */
export interface WorkerInit {
  workerIndex: number;
  module: string;
  data: unknown;
  /** Eventfd the main thread writes after posting a command. */
  controlFd: number;
  /** Int32Array over it: [0] = sequence number of the last command the worker finished. */
  ack: SharedArrayBuffer;
  port: MessagePort;
  logName: string;
  /** Call fds are written by a signal helper thread (see SignalHelper) when set. */
  signalHelper: SignalHelperOptions | null;
}

export interface RingStart {
  index: number;
  layout: QueueLayout;
  nextAvail: number;
  /** -1: no kick fd, the worker polls the ring. The worker's own duplicate: it closes it. */
  kickFd: number;
  /** -1: no call fd, completions are not signalled. The worker's own duplicate: it closes it. */
  callFd: number;
  enabled: boolean;
  eventIdx: boolean;
  features: string;
  /**
   * Guest-physical address its used ring is logged at while the front-end logs dirty pages (VRING_F_LOG), or null: the
   * ring's own address then (QEMU turns LOG_ALL on before it sends each ring's log address; used-ring writes between
   * the two must be marked too).
   */
  usedLog: number | null;
  /** The front-end's inflight-tracking buffer for this ring (INFLIGHT_SHMFD), or null. */
  inflight: RingInflight | null; // bigint as decimal (structured clone keeps bigint, but strings keep logs readable)
}

/** Where a ring's region lies in the inflight buffer. The worker's own duplicate of the fd: it closes it. */
export interface RingInflight {
  fd: number;
  /** Byte offset of this ring's region in the file. */
  offset: number;
}

/** The dirty-page log of SET_LOG_BASE. The worker's own duplicate of the fd: it closes it. */
export interface LogSpec {
  fd: number;
  size: number;
  offset: number;
}

/** Commands main → worker. Every command is answered with a WorkerResult carrying the same seq. */
export type WorkerCommand =
  | { op: 'memory'; seq: number; regions: MemoryRegionSpec[]; layouts: { index: number; layout: QueueLayout }[] }
  | { op: 'addRegion'; seq: number; region: MemoryRegionSpec }
  | { op: 'removeRegion'; seq: number; guestAddr: number; size: number; userAddr: number }
  | { op: 'start'; seq: number; ring: RingStart }
  | { op: 'stop'; seq: number; index: number; byFrontEnd: boolean }
  | { op: 'call'; seq: number; index: number; fd: number }
  | { op: 'enable'; seq: number; index: number; on: boolean }
  /** SET_FEATURES while rings run (VHOST_F_LOG_ALL turned on or off). bigint as decimal. */
  | { op: 'features'; seq: number; features: string }
  /** SET_LOG_BASE: the log to mark from now on (the previous one is unmapped); null drops it. */
  | { op: 'dirtyLog'; seq: number; log: LogSpec | null }
  /** SET_VRING_ADDR that changed only the used ring's logging on a started ring. */
  | { op: 'usedLog'; seq: number; index: number; addr: number | null }
  | { op: 'reset'; seq: number }
  | { op: 'exit'; seq: number };

export interface WorkerResult {
  seq: number;
  ok: boolean;
  /** stop: the ring's next avail index. */
  value?: number;
  error?: string;
}

/** Posted once by the worker when its handler module is loaded. */
export interface WorkerReady {
  ready: true;
  error?: string;
  /** The error was a SetupError (reported in one line by the daemon's main). */
  setup?: boolean;
}

export const CONTROL_TOKEN = 0xffff_ffff;
