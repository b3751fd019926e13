// kvm_run.exit_reason values and the kvm_run field offsets the exit loop reads.
export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;

/** Offsets inside the mmapped struct kvm_run. */
export const RUN = {
  immediateExit: 1,
  exitReason: 8,
  // io
  ioDirection: 32,
  ioSize: 33,
  ioPort: 34,
  ioCount: 36,
  ioDataOffset: 40,
  // mmio
  mmioPhysAddr: 32,
  mmioData: 40,
  mmioLen: 48,
  mmioIsWrite: 52,
  // system_event
  systemEventType: 32,
  // internal error
  internalSuberror: 32,
  internalNdata: 36,
  internalData: 40,
  // fail_entry
  failEntryReason: 32,
  failEntryCpu: 40,
} as const;

export function exitName(reason: number): string {
  const names: Record<number, string> = {
    0: 'UNKNOWN', 1: 'EXCEPTION', 2: 'IO', 4: 'DEBUG', 5: 'HLT', 6: 'MMIO', 7: 'IRQ_WINDOW_OPEN',
    8: 'SHUTDOWN', 9: 'FAIL_ENTRY', 10: 'INTR', 17: 'INTERNAL_ERROR', 24: 'SYSTEM_EVENT',
  };
  return names[reason] ?? `EXIT_${reason}`;
}
