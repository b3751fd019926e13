import { logger } from '../../protocol/log.js';
import type { KvmVcpuFd, MsrEntry } from '../kvm/vcpu-fd.js';

const log = logger('boot');

export const MSR_IA32_SYSENTER_CS = 0x174;
export const MSR_IA32_SYSENTER_ESP = 0x175;
export const MSR_IA32_SYSENTER_EIP = 0x176;
export const MSR_STAR = 0xc000_0081;
export const MSR_LSTAR = 0xc000_0082;
export const MSR_CSTAR = 0xc000_0083;
export const MSR_SYSCALL_MASK = 0xc000_0084;
export const MSR_KERNEL_GS_BASE = 0xc000_0102;
export const MSR_IA32_TSC = 0x10;
export const MSR_IA32_MISC_ENABLE = 0x1a0;
export const MSR_MTRR_DEF_TYPE = 0x2ff;

const MISC_ENABLE_FAST_STRING = 1n;
const MTRR_ENABLE = 1n << 11n;
const MTRR_MEM_TYPE_WB = 6n;

/** Boot MSR values (as Cloud Hypervisor sets them): syscall MSRs cleared, fast strings, MTRRs on with WB default. */
export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR_IA32_SYSENTER_CS, value: 0n },
    { index: MSR_IA32_SYSENTER_ESP, value: 0n },
    { index: MSR_IA32_SYSENTER_EIP, value: 0n },
    { index: MSR_STAR, value: 0n },
    { index: MSR_CSTAR, value: 0n },
    { index: MSR_KERNEL_GS_BASE, value: 0n },
    { index: MSR_SYSCALL_MASK, value: 0n },
    { index: MSR_LSTAR, value: 0n },
    { index: MSR_IA32_TSC, value: 0n },
    { index: MSR_IA32_MISC_ENABLE, value: MISC_ENABLE_FAST_STRING },
    { index: MSR_MTRR_DEF_TYPE, value: MTRR_ENABLE | MTRR_MEM_TYPE_WB },
  ];
}

/** Sets each boot MSR; one KVM refuses is logged and skipped rather than failing the boot. */
export function setBootMsrs(vcpu: KvmVcpuFd): void {
  const all = bootMsrs();
  try {
    vcpu.setMsrs(all);
    return;
  } catch {
    // fall back to one at a time to find out which one is refused
  }
  for (const m of all) {
    try {
      vcpu.setMsrs([m]);
    } catch {
      log.warn({ vcpu: vcpu.id, msr: '0x' + m.index.toString(16) }, 'KVM refused boot MSR; skipped');
    }
  }
}
