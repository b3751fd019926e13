import type { MessagePort } from 'node:worker_threads';
import type { MemoryRegionSpec } from '../memory/index.js';
import type { QueueLayout } from '../virtqueue/index.js';

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
  /** The front-end's inflight-tracking buffer for this ring (INFLIGHT_SHMFD), or null. */
  inflight: RingInflight | null; // bigint as decimal (structured clone keeps bigint, but strings keep logs readable)
}

/** Where a ring's region lies in the inflight buffer. The worker's own duplicate of the fd: it closes it. */
export interface RingInflight {
  fd: number;
  /** Byte offset of this ring's region in the file. */
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
