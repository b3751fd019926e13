import type { InterruptsDescriptor } from '../kvm/irq-sources.js';
import type { PlatformEvent } from '../devices/types.js';
import type { ModelRef } from './io.js';
import type { VcpuStop } from './run-loop.js';

export interface VcpuWorkerData {
  id: number;
  fd: number;
  runPtr: bigint;
  runSize: number;
  control: Int32Array;
  interrupts: InterruptsDescriptor;
  model: ModelRef;
}

export type VcpuWorkerMessage =
  | { type: 'ready'; id: number; tid: number }
  | { type: 'event'; id: number; event: PlatformEvent }
  | { type: 'exit'; id: number; stop: VcpuStop; exits: number; runMs: number }
  | { type: 'failed'; id: number; message: string };
