import { KumoError } from '../errors.js';

/** A broken queue (bad layout, avail index jumping, rings outside memory): the device should fail the queue. */
export class VirtqueueError extends KumoError {}

/**
 * A ring whose memory is not mapped now (its region was removed, perhaps to be added again): nothing was taken
 * from it, so it can be served again once the memory is back.
 */
export class RingMemoryError extends VirtqueueError {}

/**
 * A chain whose structure is sound but with a buffer outside guest memory: the descriptors a device answers
 * through, each as the whole (addr, len) of its descriptor where that lies in guest memory, else null. A device
 * can then fail the request in its own status field instead of returning it empty (which a driver may read as done).
 */
export interface ChainReach {
  firstReadable: { addr: number; len: number } | null;
  firstWritable: { addr: number; len: number } | null;
  lastWritable: { addr: number; len: number } | null;
}

/**
 * One hostile/malformed descriptor chain. Its head was consumed from the avail ring, so the device
 * may return it with `pushUsed(head, 0)` and carry on.
 */
export class ChainError extends VirtqueueError {
  readonly head: number;
  readonly reach: ChainReach | null;
  constructor(message: string, head: number, context: Record<string, unknown> = {}, reach: ChainReach | null = null) {
    super(message, { head, ...context });
    this.head = head;
    this.reach = reach;
  }
}
