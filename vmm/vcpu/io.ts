import type { GsiInterrupts } from '../kvm/irq-sources.js';
import type { EventSink } from '../devices/types.js';

/** One address space as the exit loop sees it (vmm/devices/bus.ts's Bus satisfies it). */
export interface ExitBus {
  /** Fills `data`; returns false (data filled with 0xff) when nothing decodes the address. */
  read(addr: number, data: Uint8Array): boolean;
  /** Returns false when nothing decodes the address. */
  write(addr: number, data: Uint8Array): boolean;
}

/** The device model a vCPU worker dispatches its PIO/MMIO exits to. */
export interface VcpuIo {
  pio: ExitBus;
  mmio: ExitBus;
}

/** What a device-model module gets when a thread builds its instance of the model. */
export interface VcpuModelContext {
  /** The model's own data, passed verbatim from the VM builder (arena SAB, config...). */
  data: unknown;
  interrupts: GsiInterrupts;
  /** Fire-and-forget events to the main thread (poweroff, reset, virtio activation). */
  events: EventSink;
  /** Which vCPU this instance serves; -1 on the main thread. */
  vcpuId: number;
}

/** A device-model module (loaded by URL in every vCPU worker) exports this as `createVcpuModel`. */
export type CreateVcpuModel = (ctx: VcpuModelContext) => VcpuIo | Promise<VcpuIo>;

export interface ModelRef {
  /** Absolute module URL (file://...). */
  module: string;
  data: unknown;
}
