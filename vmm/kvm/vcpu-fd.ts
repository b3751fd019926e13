import { ioctl } from '../../protocol/sys/libc.js';
import { KvmError } from './errors.js';
import { encodeCpuid, type CpuidEntry } from './cpuid-struct.js';
import {
  KVM_GET_LAPIC, KVM_GET_MP_STATE, KVM_GET_REGS, KVM_GET_SREGS, KVM_SET_CPUID2, KVM_SET_FPU, KVM_SET_LAPIC,
  KVM_SET_MP_STATE, KVM_SET_MSRS, KVM_SET_REGS, KVM_SET_SREGS, KVM_GET_MSRS,
} from './ioctls.js';
import {
  FPU_SIZE, LAPIC_SIZE, REGS_SIZE, SREGS_SIZE, decodeRegs, decodeSregs, encodeRegs, encodeSregs, type Regs,
  type Sregs,
} from './structs.js';

export interface MsrEntry {
  index: number;
  value: bigint;
}

/** Register/state ioctls of one vCPU fd (the run loop lives in vmm/vcpu). */
export class KvmVcpuFd {
  constructor(
    readonly id: number,
    readonly fd: number,
  ) {}

  getRegs(): Regs {
    const b = Buffer.alloc(REGS_SIZE);
    ioctl(this.fd, KVM_GET_REGS, b);
    return decodeRegs(b);
  }

  setRegs(r: Regs): void {
    ioctl(this.fd, KVM_SET_REGS, encodeRegs(r));
  }

  getSregs(): Sregs {
    const b = Buffer.alloc(SREGS_SIZE);
    ioctl(this.fd, KVM_GET_SREGS, b);
    return decodeSregs(b);
  }

  setSregs(s: Sregs): void {
    ioctl(this.fd, KVM_SET_SREGS, encodeSregs(s));
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctl(this.fd, KVM_SET_CPUID2, encodeCpuid(entries));
  }

  /** KVM_SET_MSRS; throws if KVM accepted fewer entries than given (it stops at the first refused one). */
  setMsrs(msrs: readonly MsrEntry[]): void {
    const b = Buffer.alloc(8 + msrs.length * 16);
    b.writeUInt32LE(msrs.length, 0);
    msrs.forEach((m, i) => {
      b.writeUInt32LE(m.index >>> 0, 8 + i * 16);
      b.writeBigUInt64LE(m.value, 8 + i * 16 + 8);
    });
    const n = ioctl(this.fd, KVM_SET_MSRS, b);
    if (n !== msrs.length) {
      const bad = msrs[n];
      throw new KvmError('KVM refused an MSR', { vcpu: this.id, msr: `0x${bad.index.toString(16)}`, set: n });
    }
  }

  getMsr(index: number): bigint {
    const b = Buffer.alloc(24);
    b.writeUInt32LE(1, 0);
    b.writeUInt32LE(index >>> 0, 8);
    const n = ioctl(this.fd, KVM_GET_MSRS, b);
    if (n !== 1) throw new KvmError('KVM refused to read an MSR', { msr: `0x${index.toString(16)}` });
    return b.readBigUInt64LE(16);
  }

  /** Reset FPU state as Linux expects at boot: x87 control word 0x37f, MXCSR 0x1f80. */
  setFpuDefaults(): void {
    const b = Buffer.alloc(FPU_SIZE);
    b.writeUInt16LE(0x37f, 128);
    b.writeUInt32LE(0x1f80, 408);
    ioctl(this.fd, KVM_SET_FPU, b);
  }

  getLapic(): Buffer {
    const b = Buffer.alloc(LAPIC_SIZE);
    ioctl(this.fd, KVM_GET_LAPIC, b);
    return b;
  }

  setLapic(b: Buffer): void {
    ioctl(this.fd, KVM_SET_LAPIC, b);
  }

  getMpState(): number {
    const b = Buffer.alloc(4);
    ioctl(this.fd, KVM_GET_MP_STATE, b);
    return b.readUInt32LE(0);
  }

  setMpState(state: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(state, 0);
    ioctl(this.fd, KVM_SET_MP_STATE, b);
  }
}
