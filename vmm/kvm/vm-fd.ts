import { ioctl, ioctlInt } from '../../protocol/sys/libc.js';
import { mapFd, type Mapping } from '../../protocol/sys/mem.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { KvmError } from './errors.js';
import type { Kvm } from './system.js';
import {
  KVM_CREATE_IRQCHIP, KVM_CREATE_VCPU, KVM_IOEVENTFD, KVM_IRQFD, KVM_IRQ_LINE, KVM_SET_IDENTITY_MAP_ADDR,
  KVM_SET_TSS_ADDR, KVM_SET_USER_MEMORY_REGION, KVM_SIGNAL_MSI,
} from './ioctls.js';
import { KVM_CAP_NR_MEMSLOTS } from './caps.js';

const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
const KVM_IOEVENTFD_FLAG_PIO = 2;
const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;
const KVM_IRQFD_FLAG_DEASSIGN = 1;

export interface IoEventOptions {
  /** Port I/O instead of MMIO. */
  pio?: boolean;
  /** Only writes of this value signal the eventfd. */
  datamatch?: number | bigint;
}

/** A KVM VM fd: memory slots, in-kernel irqchip, irqfd/ioeventfd, vCPU creation. Usable from any thread by fd. */
export class KvmVmFd {
  private nextSlot = 0;
  readonly maxSlots: number;

  constructor(
    readonly fd: number,
    private readonly runSize: number,
    maxSlots = 32,
  ) {
    this.maxSlots = maxSlots;
  }

  static create(kvm: Kvm): KvmVmFd {
    const fd = kvm.createVmFd();
    return new KvmVmFd(fd, kvm.vcpuMmapSize(), kvm.checkExtension(KVM_CAP_NR_MEMSLOTS));
  }

  /** KVM_SET_USER_MEMORY_REGION for a new slot; returns the slot number. */
  addMemorySlot(guestAddr: number, size: number, hostPtr: bigint, flags = 0): number {
    if (this.nextSlot >= this.maxSlots) throw new KvmError('out of KVM memory slots', { max: this.maxSlots });
    const slot = this.nextSlot++;
    const b = Buffer.alloc(32);
    b.writeUInt32LE(slot, 0);
    b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(BigInt(guestAddr), 8);
    b.writeBigUInt64LE(BigInt(size), 16);
    b.writeBigUInt64LE(hostPtr, 24);
    ioctl(this.fd, KVM_SET_USER_MEMORY_REGION, b);
    return slot;
  }

  setTssAddr(addr: number): void {
    ioctlInt(this.fd, KVM_SET_TSS_ADDR, addr);
  }

  setIdentityMapAddr(addr: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(addr));
    ioctl(this.fd, KVM_SET_IDENTITY_MAP_ADDR, b);
  }

  /** In-kernel PIC + IOAPIC + LAPICs (must precede vCPU creation). */
  createIrqchip(): void {
    ioctlInt(this.fd, KVM_CREATE_IRQCHIP, 0);
  }

  /** Raise/lower a legacy GSI (for callers without an irqfd). */
  irqLine(gsi: number, level: boolean): void {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(gsi, 0);
    b.writeUInt32LE(level ? 1 : 0, 4);
    ioctl(this.fd, KVM_IRQ_LINE, b);
  }

  irqfd(eventFd: number, gsi: number, deassign = false): void {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(eventFd, 0);
    b.writeUInt32LE(gsi, 4);
    b.writeUInt32LE(deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0, 8);
    ioctl(this.fd, KVM_IRQFD, b);
  }

  ioeventfd(eventFd: number, addr: number, len: number, opts: IoEventOptions = {}, deassign = false): void {
    if (![0, 1, 2, 4, 8].includes(len)) throw new KvmError('ioeventfd length must be 0, 1, 2, 4 or 8', { len });
    const b = Buffer.alloc(64);
    let flags = 0;
    if (opts.datamatch !== undefined) {
      flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
      b.writeBigUInt64LE(BigInt(opts.datamatch), 0);
    }
    if (opts.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (deassign) flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
    b.writeBigUInt64LE(BigInt(addr), 8);
    b.writeUInt32LE(len, 16);
    b.writeInt32LE(eventFd, 20);
    b.writeUInt32LE(flags, 24);
    ioctl(this.fd, KVM_IOEVENTFD, b);
  }

  /** Inject one MSI directly (no route needed). Returns >0 if delivered, 0 if blocked by the guest. */
  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(addressLo >>> 0, 0);
    b.writeUInt32LE(addressHi >>> 0, 4);
    b.writeUInt32LE(data >>> 0, 8);
    return ioctl(this.fd, KVM_SIGNAL_MSI, b);
  }

  /** Creates vCPU `id` and maps its kvm_run page (shared by every thread of the process). */
  createVcpu(id: number): { fd: number; run: Mapping } {
    const fd = ioctlInt(this.fd, KVM_CREATE_VCPU, id);
    try {
      return { fd, run: mapFd(fd, this.runSize) };
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
  }

  get kvmRunSize(): number {
    return this.runSize;
  }

  close(): void {
    closeQuiet(this.fd);
  }
}
