import { logger } from '../../protocol/log.js';
import type { PlatformEvent } from '../devices/types.js';
import type { Machine } from '../kvm/machine.js';
import type { ModelRef } from './io.js';
import { VcpuSet, type VcpuResult } from './vcpu-set.js';

const log = logger('vm');

/** How a VM run ended. */
export type VmOutcome =
  | { kind: 'poweroff'; source: string }
  | { kind: 'reset'; source: string }
  | { kind: 'error'; message: string; vcpu?: number; regs?: string };

export interface VmRunResult {
  outcome: VmOutcome;
  vcpus: VcpuResult[];
  /** ms from start() to every worker being in its run loop. */
  startMs: number;
}

export interface RunOptions {
  /** Platform events other than poweroff/reset (virtio activation...). */
  onEvent?: (e: PlatformEvent, vcpu: number) => void;
  /** Called once all workers run (e.g. to time "first KVM_RUN"). */
  onRunning?: () => void;
  signal?: AbortSignal;
}

/** Runs the machine's vCPUs with `model` until poweroff, reset or an error; then stops all of them. */
export async function runMachine(machine: Machine, model: ModelRef, opts: RunOptions = {}): Promise<VmRunResult> {
  let outcome: VmOutcome | null = null;
  let settle!: () => void;
  const decided = new Promise<void>((res) => (settle = res));
  const decide = (o: VmOutcome) => {
    if (outcome) return;
    outcome = o;
    settle();
  };
  let halted = 0;
  const set = new VcpuSet(
    machine.vcpus.map((v) => ({ id: v.fd.id, fd: v.fd.fd, runPtr: v.run.ptr, runSize: v.run.size })),
    machine.interrupts.describe(),
    model,
    (e, vcpu) => {
      if (e.type === 'poweroff' || e.type === 'reset') decide({ kind: e.type, source: e.source });
      else opts.onEvent?.(e, vcpu);
    },
    (r) => {
      const s = r.stop;
      switch (s.kind) {
        case 'stopped':
          break;
        case 'poweroff':
        case 'reset':
          decide({ kind: s.kind, source: `vcpu${r.id}` });
          break;
        case 'hlt':
          if (++halted === set.count) decide({ kind: 'error', message: 'all vCPUs halted' });
          break;
        case 'triple-fault':
          // The last step of Linux's reboot fallbacks (reboot=t): a reset request, as Cloud Hypervisor and QEMU take it.
          // The registers still go to the log: a guest that crashes this way at boot should be seen.
          log.warn({ vcpu: r.id, regs: s.regs }, 'triple fault (KVM_EXIT_SHUTDOWN): taken as a reset');
          decide({ kind: 'reset', source: `vcpu${r.id} triple fault` });
          break;
        case 'error':
          decide({ kind: 'error', message: `vCPU ${r.id}: ${s.message}`, vcpu: r.id, regs: s.regs });
          break;
        case 'worker-failed':
          decide({ kind: 'error', message: `vCPU ${r.id} worker failed: ${s.message}`, vcpu: r.id });
          break;
      }
    },
  );
  const abort = () => decide({ kind: 'error', message: 'aborted' });
  opts.signal?.addEventListener('abort', abort);
  const t0 = performance.now();
  await set.start();
  const startMs = performance.now() - t0;
  opts.onRunning?.();
  await decided;
  opts.signal?.removeEventListener('abort', abort);
  const vcpus = await set.stopAll();
  log.debug({ outcome }, 'vm stopped');
  return { outcome: outcome!, vcpus, startMs };
}
