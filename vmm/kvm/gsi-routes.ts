import { ioctl } from '../../protocol/sys/libc.js';
import { KvmError } from './errors.js';
import { KVM_SET_GSI_ROUTING } from './ioctls.js';
import type { InterruptRoutes, MsiMessage } from '../devices/types.js';
import type { KvmVmFd } from './vm-fd.js';

export const IOAPIC_PINS = 24;
/** First GSI handed to MSI vectors (after the IOAPIC pins). */
export const FIRST_MSI_GSI = IOAPIC_PINS;
export const MAX_GSI = 1024;

const KVM_IRQ_ROUTING_IRQCHIP = 1;
const KVM_IRQ_ROUTING_MSI = 2;
const KVM_IRQCHIP_PIC_MASTER = 0;
const KVM_IRQCHIP_PIC_SLAVE = 1;
const KVM_IRQCHIP_IOAPIC = 2;
const ENTRY = 48;

// Shared layout (Int32 words): [0] lock, [1] unused, then W words per GSI:
// [kind, addrLo, addrHi, data, irqfd eventfd (-1 none), masked].
const LOCK = 0;
const BASE = 2;
const W = 6;
const KIND_NONE = 0;
const KIND_MSI = 1;

/**
 * The VM's whole GSI routing table in a SharedArrayBuffer. KVM_SET_GSI_ROUTING replaces the entire
 * table, so every change rebuilds it from the shared copy under one lock — any thread may do it.
 */
export class GsiRoutes implements InterruptRoutes {
  private readonly w: Int32Array;

  constructor(
    private readonly vm: KvmVmFd,
    readonly sab: SharedArrayBuffer = GsiRoutes.newShared(),
  ) {
    this.w = new Int32Array(sab);
  }

  static newShared(): SharedArrayBuffer {
    const sab = new SharedArrayBuffer((BASE + MAX_GSI * W) * 4);
    const w = new Int32Array(sab);
    for (let g = 0; g < MAX_GSI; g++) w[BASE + g * W + 4] = -1;
    return sab;
  }

  /** Records the irqfd eventfd attached to an MSI GSI, so any thread can mask (detach) and unmask it. */
  recordIrqfd(gsi: number, eventFd: number): void {
    this.checkGsi(gsi);
    Atomics.store(this.w, BASE + gsi * W + 4, eventFd);
  }

  /**
   * Masking detaches the GSI's irqfd so triggers stay pending in the eventfd; unmasking re-attaches it
   * and KVM delivers what was pending.
   */
  setMasked(gsi: number, masked: boolean): void {
    this.checkGsi(gsi);
    this.locked(() => {
      const o = BASE + gsi * W;
      const fd = this.w[o + 4];
      const was = this.w[o + 5] === 1;
      if (fd < 0 || was === masked) return;
      this.vm.irqfd(fd, gsi, masked);
      this.w[o + 5] = masked ? 1 : 0;
    });
  }

  setMsiRoute(gsi: number, msg: MsiMessage): void {
    this.checkGsi(gsi);
    this.locked(() => {
      const o = BASE + gsi * W;
      this.w[o] = KIND_MSI;
      this.w[o + 1] = msg.addressLo | 0;
      this.w[o + 2] = msg.addressHi | 0;
      this.w[o + 3] = msg.data | 0;
      this.commit();
    });
  }

  clearMsiRoute(gsi: number): void {
    this.checkGsi(gsi);
    this.locked(() => {
      const o = BASE + gsi * W;
      if (this.w[o] === KIND_NONE) return;
      this.w[o] = KIND_NONE;
      this.commit();
    });
  }

  /** Installs the default IOAPIC/PIC table plus current MSI routes. */
  install(): void {
    this.locked(() => this.commit());
  }

  private checkGsi(gsi: number): void {
    if (!Number.isInteger(gsi) || gsi < FIRST_MSI_GSI || gsi >= MAX_GSI) {
      throw new KvmError('MSI route GSI out of range', { gsi });
    }
  }

  private locked(fn: () => void): void {
    while (Atomics.compareExchange(this.w, LOCK, 0, 1) !== 0) Atomics.wait(this.w, LOCK, 1, 1);
    try {
      fn();
    } finally {
      Atomics.store(this.w, LOCK, 0);
      Atomics.notify(this.w, LOCK, 1);
    }
  }

  private commit(): void {
    const entries: Buffer[] = [];
    const irqchip = (gsi: number, chip: number, pin: number) => {
      const e = Buffer.alloc(ENTRY);
      e.writeUInt32LE(gsi, 0);
      e.writeUInt32LE(KVM_IRQ_ROUTING_IRQCHIP, 4);
      e.writeUInt32LE(chip, 16);
      e.writeUInt32LE(pin, 20);
      entries.push(e);
    };
    // KVM's default routing: GSI 0-15 on both PICs and the IOAPIC, 16-23 on the IOAPIC only.
    for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
      if (gsi < 8) irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi);
      else if (gsi < 16) irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8);
      irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi);
    }
    for (let gsi = FIRST_MSI_GSI; gsi < MAX_GSI; gsi++) {
      const o = BASE + gsi * W;
      if (this.w[o] !== KIND_MSI) continue;
      const e = Buffer.alloc(ENTRY);
      e.writeUInt32LE(gsi, 0);
      e.writeUInt32LE(KVM_IRQ_ROUTING_MSI, 4);
      e.writeUInt32LE(this.w[o + 1] >>> 0, 16);
      e.writeUInt32LE(this.w[o + 2] >>> 0, 20);
      e.writeUInt32LE(this.w[o + 3] >>> 0, 24);
      entries.push(e);
    }
    const head = Buffer.alloc(8);
    head.writeUInt32LE(entries.length, 0);
    ioctl(this.vm.fd, KVM_SET_GSI_ROUTING, Buffer.concat([head, ...entries]));
  }
}
