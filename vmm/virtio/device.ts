import type { GuestMemory } from '../../protocol/memory/index.js';
import type { QueueLayout } from '../../protocol/virtqueue/index.js';
import type { Interrupt } from '../devices/types.js';
import type { EventLoop } from './event-loop.js';

/** One queue the driver enabled, as handed to the device at DRIVER_OK. */
export interface ActiveQueue {
  index: number;
  layout: QueueLayout;
  /** eventfd the guest's notify writes signal (registered as an ioeventfd). */
  kick: number;
  /** Used-buffer notification (MSI-X vector, honouring its mask). */
  interrupt: Interrupt;
}

export interface ActivateContext {
  memory: GuestMemory;
  queues: ActiveQueue[];
  /** Features the driver acknowledged (also passed to ackFeatures before activate). */
  features: bigint;
  configInterrupt: Interrupt;
  /** Main-thread loop for devices whose data plane runs in the VMM (rng, console). */
  loop: EventLoop;
  /** The device stopped serving (a queue the guest broke): the driver is told it needs a reset. */
  failed?: () => void;
}

/** A virtio device, independent of its transport. */
export interface VirtioDevice {
  readonly name: string;
  readonly deviceType: number;
  readonly queueMaxSizes: number[];
  /** The PCI slot it asks for (a device without one takes the next free slot). */
  readonly pciSlot?: number;
  features(): bigint;
  ackFeatures(f: bigint): void;
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  activate(ctx: ActivateContext): void;
  reset(): void;
}

export const NO_INTERRUPT: Interrupt = { trigger: () => {} };
