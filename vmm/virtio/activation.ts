import { logger, WarnLimiter } from '../../protocol/log.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import type { PlatformEvent, QueueActivation } from '../devices/types.js';
import { ringSizes } from '../../protocol/virtqueue/layout.js';
import type { ActiveQueue } from './device.js';
import type { EventLoop } from './event-loop.js';
import { STATUS_DRIVER_OK, type VirtioPciDevice } from './pci-transport.js';
import { VirtioError } from './errors.js';

const log = logger('virtio-activation');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);

/** Registers an eventfd to be signalled by guest writes to a guest-physical MMIO address (KVM_IOEVENTFD, any length). */
export interface IoEventRegistrar {
  register(addr: number, fd: number): void;
  unregister(addr: number, fd: number): void;
}

/**
 * Main-thread side of DRIVER_OK / reset for devices whose data plane lives in this process: creates
 * kick eventfds, registers them as ioeventfds at the notify addresses, and calls activate/reset.
 */
interface Kick {
  queue: number;
  addr: number;
  fd: number;
}

export class VirtioActivator {
  private readonly kicks = new Map<number, Kick[]>();

  constructor(
    private readonly transports: VirtioPciDevice[],
    private readonly memory: GuestMemory,
    private readonly ioEvents: IoEventRegistrar,
    private readonly loop: EventLoop,
  ) {}

  /** Returns true when the event was a virtio event for one of our transports. */
  handle(ev: PlatformEvent): boolean {
    if (ev.type !== 'virtio-activate' && ev.type !== 'virtio-reset' && ev.type !== 'virtio-notify') return false;
    const t = this.transports[ev.device];
    if (!t) return false;
    if (ev.type === 'virtio-notify') {
      this.passNotify(t, ev.device);
      return true;
    }
    // Events of different vCPUs may come out of order: an activation a later reset already undid is stale.
    if (ev.type === 'virtio-activate' && (ev.resets !== t.resetsAsked || !(t.status & STATUS_DRIVER_OK))) {
      log.debug({ device: ev.name }, 'activation overtaken by a reset; ignored');
      return true;
    }
    this.teardown(ev.device);
    if (ev.type === 'virtio-reset') {
      try {
        t.device.reset();
      } finally {
        t.resetDone(ev.seq);
      }
      return true;
    }
    const regs: Kick[] = [];
    this.kicks.set(ev.device, regs);
    try {
      for (const q of ev.queues) this.checkRings(q);
      const queues: ActiveQueue[] = ev.queues.map((q) => {
        const fd = eventfd();
        this.ioEvents.register(q.notifyAddr, fd);
        regs.push({ queue: q.index, addr: q.notifyAddr, fd });
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
        failed: () => t.needsReset(),
      });
      // A kick the guest wrote between DRIVER_OK and the ioeventfds above reached the bus, not them: a back-end may
      // wait for one before it looks at its ring (vhost-user lets it), so each queue gets one. Spurious kicks are harmless.
      for (const k of regs) eventfdWrite(k.fd);
    } catch (err) {
      guestLog.error({ err, device: ev.name }, 'activation failed; the guest is told the device needs a reset');
      this.teardown(ev.device);
      t.device.reset();
      t.needsReset();
    }
    return true;
  }

  /** Rings that are not wholly guest RAM fail the activation here, before a back-end sees them (it would hang up). */
  private checkRings(q: QueueActivation): void {
    const sizes = ringSizes(q.size);
    for (const [ring, addr, len] of [['descriptor table', q.descAddr, sizes.desc], ['available ring', q.availAddr, sizes.avail], ['used ring', q.usedAddr, sizes.used]] as const) {
      if (!this.memory.contains(addr, len)) throw new VirtioError(`queue ${q.index}: the ${ring} is not inside guest memory`, { addr, len });
    }
  }

  /**
   * A notify that reached the bus while the device runs: the guest moved its BAR since the ioeventfds were
   * registered (they follow it now), or kicked before they were. Every queue of the device is kicked.
   */
  private passNotify(t: VirtioPciDevice, device: number): void {
    t.takeNotify();
    for (const k of this.kicks.get(device) ?? []) {
      const addr = t.notifyAddress(k.queue);
      if (addr !== k.addr) {
        this.unregister(k);
        try {
          this.ioEvents.register(addr, k.fd);
          k.addr = addr;
          guestLog.info({ device: t.name, queue: k.queue, addr }, 'queue notify moved with the BAR');
        } catch (err) {
          log.warn({ err, device: t.name, queue: k.queue, addr }, 'cannot move the queue notify ioeventfd; kicks there take the slow path');
        }
      }
      eventfdWrite(k.fd);
    }
  }

  private teardown(device: number): void {
    for (const k of this.kicks.get(device) ?? []) {
      this.unregister(k);
      this.loop.remove(k.fd);
      closeQuiet(k.fd);
    }
    this.kicks.delete(device);
  }

  private unregister(k: Kick): void {
    if (k.addr < 0) return;
    try {
      this.ioEvents.unregister(k.addr, k.fd);
    } catch (err) {
      log.warn({ err, addr: k.addr }, 'ioeventfd unregister failed');
    }
    k.addr = -1;
  }
}
