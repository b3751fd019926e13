import { KumoError } from '../errors.js';

/** A broken queue (bad layout, avail index jumping, rings outside memory): the device should fail the queue. */
export class VirtqueueError extends KumoError {}

/**
 * A ring whose memory is not mapped now (its region was removed, perhaps to be added again): nothing was taken
 * from it, so it can be served again once the memory is back.
 */
export class RingMemoryError extends VirtqueueError {}

/**
 * One hostile/malformed descriptor chain. Its head was consumed from the avail ring, so the device
 * may return it with `pushUsed(head, 0)` and carry on.
 */
export class ChainError extends VirtqueueError {
  readonly head: number;
  constructor(message: string, head: number, context: Record<string, unknown> = {}) {
    super(message, { head, ...context });
    this.head = head;
  }
}
