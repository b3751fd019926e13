// The vhost-user proxy device: every thread answers feature/config reads from the shared spec; the
// main thread's instance (with a link) turns activation, reset and config writes into messages.
import { isMainThread } from 'node:worker_threads';
import { logger } from '../../protocol/log.js';
import { eventfdWrite } from '../../protocol/sys/fd.js';
import { afterBusAccess } from '../devices/bus.js';
import { waitForCount } from '../devices/shared-state.js';
import type { ActivateContext, VirtioDevice } from '../virtio/device.js';
import { VhostUserDeviceError } from './errors.js';
import type { VhostUserLink } from './link.js';
import { DIRTY_ASKED, DIRTY_DONE, type VhostUserDeviceSpec } from './spec.js';

const log = logger('vhost-user-device');
/** How long a vCPU waits for the main thread to send its config write (bounded: it must never hang a vCPU for good). */
const CONFIG_FLUSH_WAIT_MS = 5000;

export class VhostUserDevice implements VirtioDevice {
  readonly name: string;
  readonly deviceType: number;
  readonly queueMaxSizes: number[];
  readonly pciSlot: number | undefined;
  private readonly cfg: Uint8Array;
  private readonly dirty: Int32Array;
  private acked = 0n;

  constructor(
    readonly spec: VhostUserDeviceSpec,
    /** Present only on the main thread. */
    readonly link: VhostUserLink | null = null,
  ) {
    this.name = `vhost-user-${spec.kind}`;
    this.deviceType = spec.deviceType;
    this.queueMaxSizes = [...spec.queueSizes];
    this.pciSlot = spec.pciSlot ?? undefined;
    this.cfg = new Uint8Array(spec.config);
    this.dirty = new Int32Array(spec.dirty);
  }

  get ackedFeatures(): bigint {
    return this.acked;
  }

  features(): bigint {
    return this.spec.features;
  }

  ackFeatures(f: bigint): void {
    this.acked = f;
  }

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o >= 0 && o < this.cfg.length ? Atomics.load(this.cfg, o) : 0;
    }
  }

  writeConfig(offset: number, data: Uint8Array): void {
    const ok = this.spec.writable.some(([o, n]) => offset >= o && offset + data.length <= o + n);
    if (!ok) {
      log.debug({ id: this.spec.id, offset, len: data.length }, 'guest write to read-only config ignored');
      return;
    }
    for (let i = 0; i < data.length; i++) Atomics.store(this.cfg, offset + i, data[i]);
    atomicMin(this.dirty, 0, offset);
    atomicMax(this.dirty, 1, offset + data.length);
    if (this.link) {
      this.link.flushConfig();
      return;
    }
    const seq = Atomics.add(this.dirty, DIRTY_ASKED, 1) + 1;
    eventfdWrite(this.spec.configEventFd);
    // The guest's write returns once the back-end has it, as Cloud Hypervisor sends SET_CONFIG from the vCPU: a guest
    // switching to writethrough sends no FLUSH after, and writes acked before the back-end switched would be writeback.
    // Waited for outside the PCI lock, which the main thread takes to raise a config interrupt.
    if (!isMainThread) afterBusAccess(() => this.waitFlushed(seq));
  }

  private waitFlushed(seq: number): void {
    if (!waitForCount(this.dirty, DIRTY_DONE, seq, CONFIG_FLUSH_WAIT_MS)) {
      log.warn({ id: this.spec.id, waitedMs: CONFIG_FLUSH_WAIT_MS }, 'config write not yet sent to the back-end; the guest goes on');
    }
  }

  activate(ctx: ActivateContext): void {
    if (!this.link) throw new VhostUserDeviceError('vhost-user device activated on a thread without its backend connection', { id: this.spec.id });
    this.link.activate(ctx);
  }

  reset(): void {
    this.acked = 0n;
    this.link?.reset();
  }
}

function atomicMin(a: Int32Array, i: number, v: number): void {
  for (let cur = Atomics.load(a, i); v < cur; cur = Atomics.load(a, i)) {
    if (Atomics.compareExchange(a, i, cur, v) === cur) return;
  }
}

function atomicMax(a: Int32Array, i: number, v: number): void {
  for (let cur = Atomics.load(a, i); v > cur; cur = Atomics.load(a, i)) {
    if (Atomics.compareExchange(a, i, cur, v) === cur) return;
  }
}

/** The devices of a model, in spec order: linked on the main thread, model-only in vCPU workers. */
export function vhostUserDevices(specs: readonly VhostUserDeviceSpec[], links?: ReadonlyMap<string, VhostUserLink>): VhostUserDevice[] {
  return specs.map((s) => new VhostUserDevice(s, links?.get(s.id) ?? null));
}
