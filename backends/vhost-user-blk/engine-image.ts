import type { Logger } from '../../protocol/log.js';

/** What a queue engine needs to know about the image; `flags` is shared with the main thread. */
export interface BlkEngineImage {
  fd: number;
  size: number;
  readonly: boolean;
  /** Small reads and writes run with preadv/pwritev in this thread (see DiskImage.memoryBacked). */
  memoryBacked?: boolean;
  /** Small writes run with pwritev in this thread while no CPU is spare (see DiskImage.writesPunted). */
  writesPunted?: boolean;
  /** O_DIRECT: the block its offsets, lengths and buffers must keep to (see DiskImage.alignment); 0 otherwise. */
  alignment?: number;
  /** The device's logical block: fallocate takes whole ones (see DiskImage.logicalBlock); 512 if absent. */
  logicalBlock?: number;
  /**
   * A block device: fallocate(PUNCH_HOLE) there is a write-zeroes request, which a device that discards but cannot
   * write zeroes (most SATA SSDs) refuses; DISCARD then goes to it as BLKDISCARD, as QEMU sends it.
   */
  blockDevice?: boolean;
  /** 20-byte GET_ID answer. */
  serial: Uint8Array;
  /**
   * flags[0] = 1 while the device is in writethrough mode (WCE off, or FLUSH not negotiated);
   * flags[1] = how many queue engines are attached (serving a started ring), across all workers;
   * flags[2] = 1 once a write-back of a buffered image failed (WRITEBACK_FAILED, see SyncRequests.failed);
   * from flags[3] on, the WriteGate of O_DIRECT images with blocks larger than a sector (IMAGE_FLAGS_LENGTH in all).
   */
  flags: Int32Array;
}

export type CompletionMode = 'eventfd' | 'wait';

export interface BlkEngineOptions {
  queueSize: number;
  completion: CompletionMode;
  log?: Logger;
  /** O_DIRECT requests off the alignment: the pool's byte limit and the piece size (tests make them small). */
  pooled?: { limit: number; piece: number };
  /** The eventfd this queue's thread waits on for completions: a copy helper writes it after a burst. */
  wakeFd?: number;
}
