import type { DescriptorChain } from '../../protocol/virtqueue/chain.js';
import type { ChainError } from '../../protocol/virtqueue/errors.js';

/** The part of protocol/virtqueue's DeviceQueue the net data path uses. */
export interface NetQueue {
  nextAvailIdx: number;
  pop(): DescriptorChain | null;
  pushUsed(head: number, writtenLen: number): void;
  /** Gives back a chain pop() refused; false when its head names no descriptor (nothing to give back). */
  returnMalformed(e: ChainError): boolean;
  publishUsed(): void;
  disableNotifications(): void;
  /** Re-arms guest kicks; true if more buffers arrived meanwhile (keep going). */
  enableNotifications(): boolean;
}

/** Outcome of one pass over a queue. */
export const PassResult = {
  /** The source ran dry (TAP has no frame / TX ring empty). */
  Drained: 0,
  /** RX ring has no (or not enough) buffers: stop reading the TAP until the guest kicks. */
  NoBuffers: 1,
  /** The TAP would block on write: wait for EPOLLOUT. */
  Blocked: 2,
  /** Batch budget spent; more work is likely waiting. */
  Budget: 3,
} as const;
export type PassResult = (typeof PassResult)[keyof typeof PassResult];
