import { eventfd, eventfdWrite, closeQuiet } from '../../protocol/sys/fd.js';
import type { Interrupt } from '../devices/types.js';
import type { IoEventRegistrar } from '../virtio/activation.js';
import { KvmError } from './errors.js';
import { GsiRoutes, IOAPIC_PINS, MAX_GSI } from './gsi-routes.js';
import { KvmVmFd } from './vm-fd.js';

/** An interrupt source: writing its eventfd injects the GSI (KVM irqfd). Safe from any thread. */
export class GsiInterrupt implements Interrupt {
  constructor(
    readonly gsi: number,
    readonly fd: number,
  ) {}
  trigger(): void {
    eventfdWrite(this.fd);
  }
}

/** Gives the device model the irqfd-backed interrupt of a GSI (IOAPIC pin < 24, MSI route above). */
export interface GsiInterrupts {
  interrupt(gsi: number): Interrupt;
  readonly routes: GsiRoutes;
}

/** What a vCPU worker needs to rebuild the same interrupt sources (structured-clone safe). */
export interface InterruptsDescriptor {
  vmFd: number;
  runSize: number;
  routes: SharedArrayBuffer;
  gsis: [gsi: number, fd: number][];
}

/**
 * The main thread's side: one eventfd + KVM irqfd per GSI the model asks for, created on first use.
 * Workers use `ReplayInterrupts` over describe(): same GSIs, same eventfds.
 */
export class KvmInterrupts implements GsiInterrupts, IoEventRegistrar {
  readonly routes: GsiRoutes;
  private readonly sources = new Map<number, GsiInterrupt>();

  constructor(private readonly vm: KvmVmFd) {
    this.routes = new GsiRoutes(vm);
    this.routes.install();
  }

  interrupt(gsi: number): GsiInterrupt {
    if (!Number.isInteger(gsi) || gsi < 0 || gsi >= MAX_GSI) throw new KvmError('GSI out of range', { gsi });
    let src = this.sources.get(gsi);
    if (!src) {
      const fd = eventfd();
      try {
        this.vm.irqfd(fd, gsi);
        if (gsi >= IOAPIC_PINS) this.routes.recordIrqfd(gsi, fd);
      } catch (e) {
        closeQuiet(fd);
        throw e;
      }
      src = new GsiInterrupt(gsi, fd);
      this.sources.set(gsi, src);
    }
    return src;
  }

  /** KVM_IOEVENTFD on an MMIO address, any access length (virtio notify). */
  register(addr: number, fd: number): void {
    this.vm.ioeventfd(fd, addr, 0);
  }

  unregister(addr: number, fd: number): void {
    this.vm.ioeventfd(fd, addr, 0, {}, true);
  }

  describe(): InterruptsDescriptor {
    return {
      vmFd: this.vm.fd,
      runSize: this.vm.kvmRunSize,
      routes: this.routes.sab,
      gsis: [...this.sources.values()].map((s) => [s.gsi, s.fd]),
    };
  }

  close(): void {
    for (const s of this.sources.values()) closeQuiet(s.fd);
    this.sources.clear();
  }
}

/** Worker-side: the main thread's sources by GSI; asking for one main never created is a model mismatch. */
export class ReplayInterrupts implements GsiInterrupts {
  readonly routes: GsiRoutes;
  private readonly sources: Map<number, GsiInterrupt>;

  constructor(d: InterruptsDescriptor) {
    this.routes = new GsiRoutes(new KvmVmFd(d.vmFd, d.runSize), d.routes);
    this.sources = new Map(d.gsis.map(([gsi, fd]) => [gsi, new GsiInterrupt(gsi, fd)]));
  }

  interrupt(gsi: number): GsiInterrupt {
    const s = this.sources.get(gsi);
    if (!s) throw new KvmError('interrupt GSI was not created on the main thread', { gsi });
    return s;
  }
}
