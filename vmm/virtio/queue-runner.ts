import { logger, WarnLimiter } from '../../protocol/log.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { eventfdRead } from '../../protocol/sys/fd.js';
import { DeviceQueue, type DescriptorChain } from '../../protocol/virtqueue/index.js';
import type { ActiveQueue } from './device.js';
import type { EventLoop } from './event-loop.js';

const log = logger('virtio-queue');
/** A guest can break queues at will: rate-limited. */
const guestLog = new WarnLimiter(log);
/** Chains one run completes before it lets the main loop serve other devices and events (it goes on after them). */
const CHAINS_PER_RUN = 64;

/** Returns bytes written into the chain's writable part, or null to stop (no resource; retry later). */
export type ChainHandler = (chain: DescriptorChain, mem: GuestMemory) => number | null;

/**
 * Runs one queue of a built-in device: drain the kick, pop chains, complete them, notify once per
 * batch. A hostile chain stops the queue (the guest broke the protocol) instead of looping on it.
 */
export class QueueRunner {
  readonly queue: DeviceQueue;
  private broken = false;
  private stopped = false;
  private rerun = false;
  private parked: DescriptorChain | null = null;

  constructor(
    private readonly mem: GuestMemory,
    readonly active: ActiveQueue,
    eventIdx: boolean,
    private readonly handler: ChainHandler,
    private readonly name: string,
    /** Called once the queue stops on a bad chain (the transport then tells the driver to reset the device). */
    private readonly onBroken?: () => void,
  ) {
    this.queue = new DeviceQueue(mem, active.layout, { eventIdx, maxChainLength: 1024 });
  }

  listen(loop: EventLoop): void {
    loop.add(this.active.kick, () => {
      eventfdRead(this.active.kick);
      this.run();
    });
  }

  unlisten(loop: EventLoop): void {
    loop.remove(this.active.kick);
    this.stopped = true;
  }

  /** Processes available chains; also called when a resource (input data) becomes available. */
  run(): void {
    if (this.broken || this.stopped) return;
    let done = 0;
    try {
      for (;;) {
        if (done === CHAINS_PER_RUN) {
          this.runAgain();
          break;
        }
        const chain = this.parked ?? this.queue.pop();
        this.parked = null;
        if (!chain) break;
        const written = this.handler(chain, this.mem);
        if (written === null) {
          this.parked = chain;
          break;
        }
        this.queue.pushUsed(chain.head, written);
        done++;
      }
    } catch (err) {
      this.broken = true;
      guestLog.error({ err: (err as Error).message, device: this.name, queue: this.active.index }, 'queue stopped: bad chain from the guest; the driver is told the device needs a reset');
      this.onBroken?.();
    }
    if (done > 0) {
      this.queue.publishUsed();
      if (this.queue.needsNotification()) this.active.interrupt.trigger();
    }
  }

  private runAgain(): void {
    if (this.rerun) return;
    this.rerun = true;
    setImmediate(() => {
      this.rerun = false;
      this.run();
    });
  }
}
