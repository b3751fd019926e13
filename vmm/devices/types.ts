import type { ArenaLock } from './shared-state.js';

/** A device on a PIO or MMIO bus; offset is relative to the range base the device was inserted at. */
export interface BusDevice {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
  /** The lock the bus takes around accesses; devices that are also touched outside the bus (serial input) expose theirs. */
  readonly lock?: ArenaLock;
}

/** An interrupt source; backed by an eventfd registered as a KVM irqfd (writing it works from any thread). */
export interface Interrupt {
  trigger(): void;
}

/** Where a device writes guest output (serial THR, virtio-console tx). */
export type OutputSink = (data: Uint8Array) => void;

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}

/**
 * GSI routing for MSI-X vectors, implemented by the KVM side (KVM_SET_GSI_ROUTING under a lock).
 * A masked GSI has its irqfd detached; KVM re-checks the eventfd when it is re-attached, so a trigger
 * while masked is delivered at unmask instead of being lost.
 */
export interface InterruptRoutes {
  setMsiRoute(gsi: number, msg: MsiMessage): void;
  clearMsiRoute(gsi: number): void;
  setMasked(gsi: number, masked: boolean): void;
}

/** Per-queue data handed to the transport's owner when the driver sets DRIVER_OK. */
export interface QueueActivation {
  index: number;
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  /** MSI-X vector the driver chose, or null for VIRTIO_MSI_NO_VECTOR. */
  vector: number | null;
  /** GSI of that vector (irqfd target), or null. */
  gsi: number | null;
  /** Guest-physical address of this queue's notify register (for an ioeventfd, any access length). */
  notifyAddr: number;
}

export type PlatformEvent =
  | { type: 'reset'; source: string }
  | { type: 'poweroff'; source: string }
  | { type: 'virtio-activate'; device: number; name: string; features: bigint; queues: QueueActivation[]; configGsi: number | null; resets: number }
  | { type: 'virtio-reset'; device: number; name: string; seq: number }
  /** A queue notify that reached the bus (no ioeventfd at its address yet, or the BAR moved since). */
  | { type: 'virtio-notify'; device: number; name: string };

/** Fire-and-forget: in a vCPU worker this posts to the main thread; never waited on. */
export type EventSink = (event: PlatformEvent) => void;
