// KVM_CHECK_EXTENSION capability numbers the VMM relies on.
export const KVM_CAP_IRQCHIP = 0x00;
export const KVM_CAP_NR_MEMSLOTS = 0x0a;
export const KVM_CAP_IRQFD = 0x20;
export const KVM_CAP_IOEVENTFD = 0x24;
export const KVM_CAP_MAX_VCPUS = 0x42;
export const KVM_CAP_SIGNAL_MSI = 0x4d;
export const KVM_CAP_IMMEDIATE_EXIT = 0x88;

/** Capabilities without which kumo refuses to start (named in the error). */
export const REQUIRED_CAPS: ReadonlyArray<[number, string]> = [
  [KVM_CAP_IRQCHIP, 'KVM_CAP_IRQCHIP'],
  [KVM_CAP_IRQFD, 'KVM_CAP_IRQFD'],
  [KVM_CAP_IOEVENTFD, 'KVM_CAP_IOEVENTFD'],
  [KVM_CAP_IMMEDIATE_EXIT, 'KVM_CAP_IMMEDIATE_EXIT'],
];
