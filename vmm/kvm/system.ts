import { ioctlInt, ioctl } from '../../protocol/sys/libc.js';
import { openFile, closeQuiet, O_RDWR, O_CLOEXEC } from '../../protocol/sys/fd.js';
import { KvmError } from './errors.js';
import { REQUIRED_CAPS } from './caps.js';
import {
  KVM_API_VERSION, KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION, KVM_GET_SUPPORTED_CPUID,
  KVM_GET_VCPU_MMAP_SIZE,
} from './ioctls.js';
import { CPUID_ENTRY_SIZE, type CpuidEntry, decodeCpuid } from './cpuid-struct.js';

/** The /dev/kvm handle: API checks, capability queries, VM creation. */
export class Kvm {
  private cpuid: readonly CpuidEntry[] | null = null;

  private constructor(readonly fd: number) {}

  static open(path = '/dev/kvm'): Kvm {
    let fd: number;
    try {
      fd = openFile(path, O_RDWR | O_CLOEXEC);
    } catch (e) {
      throw new KvmError(`cannot open ${path}: ${(e as Error).message}`, { path });
    }
    const kvm = new Kvm(fd);
    try {
      const v = ioctlInt(fd, KVM_GET_API_VERSION, 0);
      if (v !== KVM_API_VERSION) throw new KvmError('unsupported KVM API version', { version: v });
      for (const [cap, name] of REQUIRED_CAPS) {
        if (kvm.checkExtension(cap) <= 0) throw new KvmError(`KVM lacks ${name}`, { cap });
      }
    } catch (e) {
      kvm.close();
      throw e;
    }
    return kvm;
  }

  checkExtension(cap: number): number {
    return ioctlInt(this.fd, KVM_CHECK_EXTENSION, cap);
  }

  vcpuMmapSize(): number {
    return ioctlInt(this.fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  }

  /** Returns a new VM fd (type 0: default x86 VM). */
  createVmFd(): number {
    return ioctlInt(this.fd, KVM_CREATE_VM, 0);
  }

  /** KVM_GET_SUPPORTED_CPUID, asked once (the VMM reads it for the vCPUs and for the guest's address width). */
  supportedCpuid(): readonly CpuidEntry[] {
    if (this.cpuid !== null) return this.cpuid;
    const max = 256;
    const buf = Buffer.alloc(8 + max * CPUID_ENTRY_SIZE);
    buf.writeUInt32LE(max, 0);
    ioctl(this.fd, KVM_GET_SUPPORTED_CPUID, buf);
    this.cpuid = decodeCpuid(buf);
    return this.cpuid;
  }

  close(): void {
    closeQuiet(this.fd);
  }
}
