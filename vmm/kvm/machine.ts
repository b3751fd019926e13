import { logger } from '../../protocol/log.js';
import type { Mapping } from '../../protocol/sys/mem.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { GuestRam, type GuestRamOptions } from '../memory/guest-ram.js';
import { KVM_IDENTITY_MAP_START, KVM_TSS_START } from '../memory/layout.js';
import { Kvm } from './system.js';
import { KvmVmFd } from './vm-fd.js';
import { KvmVcpuFd } from './vcpu-fd.js';
import { KvmInterrupts } from './irq-sources.js';

const log = logger('machine');

export interface MachineVcpu {
  fd: KvmVcpuFd;
  run: Mapping;
}

/**
 * A KVM VM with guest RAM, in-kernel irqchip (PIC/IOAPIC/LAPIC, no PIT, like Cloud Hypervisor),
 * interrupt sources and its vCPUs created — nothing loaded, nothing running.
 */
export class Machine {
  private constructor(
    readonly kvm: Kvm,
    readonly vm: KvmVmFd,
    readonly ram: GuestRam,
    readonly interrupts: KvmInterrupts,
    readonly vcpus: MachineVcpu[],
  ) {}

  static create(opts: { memory: GuestRamOptions; vcpus: number; kvmPath?: string }): Machine {
    const kvm = Kvm.open(opts.kvmPath);
    let vm: KvmVmFd | null = null;
    let ram: GuestRam | null = null;
    let interrupts: KvmInterrupts | null = null;
    const vcpus: MachineVcpu[] = [];
    try {
      vm = KvmVmFd.create(kvm);
      vm.setTssAddr(KVM_TSS_START);
      vm.setIdentityMapAddr(KVM_IDENTITY_MAP_START);
      vm.createIrqchip();
      ram = GuestRam.create(opts.memory);
      for (const r of ram.memory.regions) vm.addMemorySlot(r.guestAddr, r.size, r.ptr);
      interrupts = new KvmInterrupts(vm);
      for (let id = 0; id < opts.vcpus; id++) {
        const { fd, run } = vm.createVcpu(id);
        vcpus.push({ fd: new KvmVcpuFd(id, fd), run });
      }
      log.debug({ vcpus: opts.vcpus, memory: opts.memory.size }, 'machine created');
      return new Machine(kvm, vm, ram, interrupts, vcpus);
    } catch (e) {
      for (const v of vcpus) {
        v.run.unmap();
        closeQuiet(v.fd.fd);
      }
      interrupts?.close();
      ram?.close();
      vm?.close();
      kvm.close();
      throw e;
    }
  }

  close(): void {
    for (const v of this.vcpus) {
      v.run.unmap();
      closeQuiet(v.fd.fd);
    }
    this.vcpus.length = 0;
    this.interrupts.close();
    this.vm.close();
    this.ram.close();
    this.kvm.close();
  }
}
