import { KumoError } from '../errors.js';

/** A broken queue (bad layout, avail index jumping, rings outside memory): the device should fail the queue. */
export class VirtqueueError extends KumoError {}

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
