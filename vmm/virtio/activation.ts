import { logger } from '../../protocol/log.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { closeQuiet, eventfd } from '../../protocol/sys/fd.js';
import type { PlatformEvent } from '../devices/types.js';
import type { ActiveQueue } from './device.js';
import type { EventLoop } from './event-loop.js';
import type { VirtioPciDevice } from './pci-transport.js';

const log = logger('virtio-activation');

/** Registers an eventfd to be signalled by guest writes to a guest-physical MMIO address (KVM_IOEVENTFD, any length). */
export interface IoEventRegistrar {
  register(addr: number, fd: number): void;
  unregister(addr: number, fd: number): void;
}

/**
 * Main-thread side of DRIVER_OK / reset for devices whose data plane lives in this process: creates
 * kick eventfds, registers them as ioeventfds at the notify addresses, and calls activate/reset.
 */
export class VirtioActivator {
  private readonly kicks = new Map<number, { addr: number; fd: number }[]>();

  constructor(
    private readonly transports: VirtioPciDevice[],
    private readonly memory: GuestMemory,
    private readonly ioEvents: IoEventRegistrar,
    private readonly loop: EventLoop,
  ) {}

  /** Returns true when the event was a virtio event for one of our transports. */
  handle(ev: PlatformEvent): boolean {
    if (ev.type !== 'virtio-activate' && ev.type !== 'virtio-reset') return false;
    const t = this.transports[ev.device];
    if (!t) return false;
    this.teardown(ev.device);
    if (ev.type === 'virtio-reset') {
      t.device.reset();
      return true;
    }
    const regs: { addr: number; fd: number }[] = [];
    this.kicks.set(ev.device, regs);
    try {
      const queues: ActiveQueue[] = ev.queues.map((q) => {
        const fd = eventfd();
        this.ioEvents.register(q.notifyAddr, fd);
        regs.push({ addr: q.notifyAddr, fd });
        return {
          index: q.index,
          layout: { size: q.size, descAddr: q.descAddr, availAddr: q.availAddr, usedAddr: q.usedAddr },
          kick: fd,
          interrupt: t.vectorInterrupt(q.vector),
        };
      });
      t.device.ackFeatures(ev.features);
      t.device.activate({
        memory: this.memory,
        queues,
        features: ev.features,
        configInterrupt: t.vectorInterrupt(ev.configGsi === null ? null : ev.configGsi - t.msix.gsiBase),
        loop: this.loop,
      });
    } catch (err) {
      log.error({ err, device: ev.name }, 'activation failed');
      this.teardown(ev.device);
      t.device.reset();
    }
    return true;
  }

  private teardown(device: number): void {
    for (const { addr, fd } of this.kicks.get(device) ?? []) {
      try {
        this.ioEvents.unregister(addr, fd);
      } catch (err) {
        log.warn({ err, addr }, 'ioeventfd unregister failed');
      }
      this.loop.remove(fd);
      closeQuiet(fd);
    }
    this.kicks.delete(device);
  }
}
