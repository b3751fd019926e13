import type { KvmVcpuFd } from '../kvm/vcpu-fd.js';

const APIC_LVT0 = 0x350;
const APIC_LVT1 = 0x360;
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

function setDeliveryMode(reg: number, mode: number): number {
  return ((reg & ~0x700) | (mode << 8)) >>> 0;
}

/** LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI — the local APIC wiring a PC BIOS leaves. */
export function setupLapic(vcpu: KvmVcpuFd): void {
  const l = vcpu.getLapic();
  l.writeUInt32LE(setDeliveryMode(l.readUInt32LE(APIC_LVT0), APIC_MODE_EXTINT), APIC_LVT0);
  l.writeUInt32LE(setDeliveryMode(l.readUInt32LE(APIC_LVT1), APIC_MODE_NMI), APIC_LVT1);
  vcpu.setLapic(l);
}
