import type { CpuidEntry } from '../kvm/cpuid-struct.js';
import type { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { guestCpuid } from './cpuid.js';
import { setBootMsrs } from './msrs.js';
import { setupLapic } from './lapic.js';

/** Architectural setup every vCPU gets before it first runs (BSP and APs alike). */
export function configureVcpu(vcpu: KvmVcpuFd, supportedCpuid: readonly CpuidEntry[], cpus: number): void {
  vcpu.setCpuid(guestCpuid(supportedCpuid, vcpu.id, cpus));
  setBootMsrs(vcpu);
  vcpu.setFpuDefaults();
  setupLapic(vcpu);
}
