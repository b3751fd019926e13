import type { CompletionMode } from './engine.js';

/** What the main thread hands each blk queue worker (structured-cloned; `flags` stays shared). */
export interface BlkWorkerData {
  fd: number;
  size: number;
  readonly: boolean;
  /** See DiskImage.memoryBacked. */
  memoryBacked: boolean;
  /** See DiskImage.writesPunted. */
  writesPunted: boolean;
  /** See DiskImage.alignment. */
  alignment: number;
  /** See DiskImage.logicalBlock. */
  logicalBlock: number;
  /** The image is a block device (DISCARD may need BLKDISCARD, see BlkEngineImage.blockDevice). */
  blockDevice: boolean;
  serial: Uint8Array;
  /** Int32Array over it: [0] = writethrough, [1] = queues being served, then the O_DIRECT WriteGate (see BlkEngineImage.flags). */
  flags: SharedArrayBuffer;
  queueSize: number;
  pollQueue: boolean;
  /** Busy-poll window in microseconds when pollQueue is on. */
  pollUs: number;
  completion: CompletionMode;
}

export function isBlkWorkerData(d: unknown): d is BlkWorkerData {
  if (typeof d !== 'object' || d === null) return false;
  const o = d as Record<string, unknown>;
  return typeof o.fd === 'number' && typeof o.size === 'number' && o.flags instanceof SharedArrayBuffer && o.serial instanceof Uint8Array;
}
