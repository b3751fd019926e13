import { isMainThread } from 'node:worker_threads';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { afterBusAccess } from '../devices/bus.js';
import { waitForCount, type ArenaBlock, type SharedArena } from '../devices/shared-state.js';
import type { BusDevice, EventSink, Interrupt, InterruptRoutes, PlatformEvent, QueueActivation } from '../devices/types.js';
import { PciConfig } from '../pci/config.js';
import { MsixState } from '../pci/msix.js';
import type { PciFunction, PciRoot } from '../pci/root.js';
import type { VirtioDevice } from './device.js';

const log = logger('virtio-pci');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);
/** How long a vCPU's reset write waits for the device to stop (bounded: it must never hang a vCPU for good). */
const RESET_WAIT_MS = 5000;

export type VirtioActivateEvent = Extract<PlatformEvent, { type: 'virtio-activate' }>;

export const VIRTIO_PCI_VENDOR = 0x1af4;
export const VIRTIO_PCI_DEVICE_BASE = 0x1040;
export const VIRTIO_BAR_SIZE = 512 << 10;
export const COMMON_OFFSET = 0x0;
export const COMMON_LEN = 0x38;
export const ISR_OFFSET = 0x2000;
export const DEVICE_CFG_OFFSET = 0x4000;
export const DEVICE_CFG_LEN = 0x1000;
export const NOTIFY_OFFSET = 0x6000;
export const NOTIFY_MULTIPLIER = 4;
export const MSIX_TABLE_OFFSET = 0x8000;
export const MSIX_PBA_OFFSET = 0x48000;
export const NO_VECTOR = 0xffff;

export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 0x40;
export const STATUS_FAILED = 0x80;

const VERSION_1 = 1n << 32n;
const CAP_VENDOR = 0x09;
const CFG_COMMON = 1;
const CFG_NOTIFY = 2;
const CFG_ISR = 3;
const CFG_DEVICE = 4;
const CFG_PCI = 5;

// Transport state in the arena.
const T_DFSELECT = 0;
const T_GFSELECT = 4;
const T_GF_LO = 8;
const T_GF_HI = 12;
const T_MSIX_CONFIG = 16;
const T_STATUS = 18;
const T_GENERATION = 19;
const T_QSELECT = 20;
const T_ISR = 22;
/** A notify event posted and not yet taken by the main thread (coalesces them). */
const T_NOTIFY_POSTED = 23;
/** Resets asked for by a status write of 0, and done by the main thread (Int32 counters; kept by resets). */
const T_RESET_ASKED = 24;
const T_RESET_DONE = 28;
const T_QUEUES = 32;
const Q_SIZE = 0;
const Q_VECTOR = 2;
const Q_ENABLE = 4;
const Q_DESC = 8;
const Q_DRIVER = 16;
const Q_DEVICE = 24;
const Q_STRIDE = 32;

export interface VirtioPciOptions {
  /** Index of this device in the platform's virtio list (identifies it in events). */
  index: number;
  root: PciRoot;
  barAddr: number;
  gsiBase: number;
  routes: InterruptRoutes;
  irq: (gsi: number) => Interrupt;
  events: EventSink;
}

function classFor(type: number): number {
  if (type === 1) return 0x020000; // network controller
  if (type === 2) return 0x018000; // mass storage, other
  return 0xff0000;
}

/**
 * virtio-pci modern transport (virtio 1.x §4.1) with Cloud Hypervisor's BAR0 layout. Register state
 * lives in the arena; DRIVER_OK and reset become events for the transport's owner in the main thread.
 */
export class VirtioPciDevice implements PciFunction {
  readonly config: PciConfig;
  readonly msix: MsixState;
  readonly numQueues: number;
  readonly slot: number;
  private readonly s: ArenaBlock;

  constructor(
    arena: SharedArena,
    readonly device: VirtioDevice,
    private readonly opts: VirtioPciOptions,
  ) {
    const name = `virtio${opts.index}-${device.name}`;
    this.numQueues = device.queueMaxSizes.length;
    const vectors = this.numQueues + 1;
    this.config = new PciConfig(
      arena,
      name,
      {
        vendor: VIRTIO_PCI_VENDOR,
        device: VIRTIO_PCI_DEVICE_BASE + device.deviceType,
        revision: 1,
        classCode: classFor(device.deviceType),
        subsystemVendor: VIRTIO_PCI_VENDOR,
        subsystemId: 0x40,
      },
      opts.root.mmio,
      opts.root.windows,
    );
    const irqs = Array.from({ length: vectors }, (_, v) => opts.irq(opts.gsiBase + v));
    this.msix = new MsixState(arena, name, vectors, opts.gsiBase, opts.routes, irqs, opts.root.lock);
    this.s = arena.allocInit(`virtio:${name}`, T_QUEUES + this.numQueues * Q_STRIDE, (b) => this.resetState(b));
    this.addVendorCap(CFG_COMMON, COMMON_OFFSET, COMMON_LEN);
    this.addVendorCap(CFG_NOTIFY, NOTIFY_OFFSET, this.numQueues * NOTIFY_MULTIPLIER, NOTIFY_MULTIPLIER);
    this.addVendorCap(CFG_ISR, ISR_OFFSET, 1);
    this.addVendorCap(CFG_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN);
    this.addPciCfgCap();
    this.msix.attach(this.config, 0, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET);
    const bar: BusDevice = {
      lock: opts.root.lock,
      read: (o, d) => this.barRead(o, d),
      write: (o, d) => this.barWrite(o, d),
    };
    this.config.addBar({ index: 0, size: VIRTIO_BAR_SIZE, is64: true, prefetchable: false, addr: opts.barAddr, device: bar, name });
    this.slot = opts.root.add(this, device.pciSlot);
  }

  get name(): string {
    return this.config.name;
  }

  get status(): number {
    return this.s.u8[T_STATUS];
  }

  barAddress(): number {
    return this.config.barAddress(0);
  }

  notifyAddress(queue: number): number {
    return this.barAddress() + NOTIFY_OFFSET + queue * NOTIFY_MULTIPLIER;
  }

  /** Interrupt for a queue's (or config's, queue = -1) current vector; a no-op for NO_VECTOR. */
  vectorInterrupt(vector: number | null): Interrupt {
    if (vector === null || vector >= this.msix.vectors) return { trigger: () => {} };
    return this.msix.vector(vector);
  }

  barRead(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset < COMMON_LEN) this.commonRead(offset, data);
    else if (offset === ISR_OFFSET) {
      data[0] = this.s.u8[T_ISR];
      this.s.u8[T_ISR] = 0; // read-to-clear
    } else if (offset >= DEVICE_CFG_OFFSET && offset + data.length <= DEVICE_CFG_OFFSET + DEVICE_CFG_LEN) {
      this.device.readConfig(offset - DEVICE_CFG_OFFSET, data);
    } else if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_TABLE_OFFSET + this.msix.tableBytes) {
      this.msix.tableRead(offset - MSIX_TABLE_OFFSET, data);
    } else if (offset >= MSIX_PBA_OFFSET && offset < MSIX_PBA_OFFSET + this.msix.pbaBytes) {
      this.msix.pbaRead(offset - MSIX_PBA_OFFSET, data);
    }
  }

  barWrite(offset: number, data: Uint8Array): void {
    if (offset < COMMON_LEN) this.commonWrite(offset, data);
    else if (offset >= DEVICE_CFG_OFFSET && offset + data.length <= DEVICE_CFG_OFFSET + DEVICE_CFG_LEN) {
      this.device.writeConfig(offset - DEVICE_CFG_OFFSET, data);
    } else if (offset >= NOTIFY_OFFSET && offset < NOTIFY_OFFSET + this.numQueues * NOTIFY_MULTIPLIER) {
      // Normally caught by an ioeventfd. Here: a kick right after DRIVER_OK, before the main thread registered it, or
      // one at a BAR the guest moved since. The main thread passes it on, so no notification is lost.
      if (!(this.s.u8[T_STATUS] & STATUS_DRIVER_OK)) {
        log.debug({ device: this.name, queue: (offset - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER }, 'notify before DRIVER_OK ignored');
      } else if (Atomics.compareExchange(this.s.u8, T_NOTIFY_POSTED, 0, 1) === 0) {
        this.opts.events({ type: 'virtio-notify', device: this.opts.index, name: this.name });
      }
    } else if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_TABLE_OFFSET + this.msix.tableBytes) {
      this.msix.tableWrite(offset - MSIX_TABLE_OFFSET, data);
    }
  }

  private commonRead(offset: number, data: Uint8Array): void {
    const v = this.s.view;
    const q = this.selectedQueue();
    const feats = this.device.features() | VERSION_1;
    let val = 0;
    switch (offset) {
      case 0x00: val = v.getUint32(T_DFSELECT, true); break;
      case 0x04: {
        const sel = v.getUint32(T_DFSELECT, true);
        val = sel > 1 ? 0 : Number((feats >> BigInt(32 * sel)) & 0xffff_ffffn);
        break;
      }
      case 0x08: val = v.getUint32(T_GFSELECT, true); break;
      case 0x0c: {
        const sel = v.getUint32(T_GFSELECT, true);
        val = sel > 1 ? 0 : v.getUint32(sel === 0 ? T_GF_LO : T_GF_HI, true);
        break;
      }
      case 0x10: val = v.getUint16(T_MSIX_CONFIG, true); break;
      case 0x12: val = this.numQueues; break;
      case 0x14: val = v.getUint8(T_STATUS); break;
      case 0x15: val = v.getUint8(T_GENERATION); break;
      case 0x16: val = v.getUint16(T_QSELECT, true); break;
      case 0x18: val = q < 0 ? 0 : v.getUint16(this.qoff(q, Q_SIZE), true); break;
      case 0x1a: val = q < 0 ? NO_VECTOR : v.getUint16(this.qoff(q, Q_VECTOR), true); break;
      case 0x1c: val = q < 0 ? 0 : v.getUint16(this.qoff(q, Q_ENABLE), true); break;
      case 0x1e: val = q < 0 ? 0 : q; break;
      case 0x20: case 0x24: case 0x28: case 0x2c: case 0x30: case 0x34: {
        if (q < 0) break;
        const field = offset < 0x28 ? Q_DESC : offset < 0x30 ? Q_DRIVER : Q_DEVICE;
        val = v.getUint32(this.qoff(q, field) + (offset & 4), true);
        break;
      }
      default:
        return;
    }
    for (let i = 0; i < data.length && i < 4; i++) data[i] = (val >>> (8 * i)) & 0xff;
  }

  private commonWrite(offset: number, data: Uint8Array): void {
    const v = this.s.view;
    let val = 0;
    for (let i = 0; i < data.length && i < 4; i++) val |= data[i] << (8 * i);
    val >>>= 0;
    const q = this.selectedQueue();
    const live = (v.getUint8(T_STATUS) & STATUS_DRIVER_OK) !== 0;
    switch (offset) {
      case 0x00: v.setUint32(T_DFSELECT, val, true); return;
      case 0x08: v.setUint32(T_GFSELECT, val, true); return;
      case 0x0c: {
        const sel = v.getUint32(T_GFSELECT, true);
        if (sel <= 1 && !(v.getUint8(T_STATUS) & STATUS_FEATURES_OK)) v.setUint32(sel === 0 ? T_GF_LO : T_GF_HI, val, true);
        return;
      }
      case 0x10: v.setUint16(T_MSIX_CONFIG, val < this.msix.vectors ? val : NO_VECTOR, true); return;
      case 0x14: this.writeStatus(val & 0xff); return;
      case 0x16: v.setUint16(T_QSELECT, val & 0xffff, true); return;
      case 0x18: {
        const max = this.device.queueMaxSizes[q] ?? 0;
        if (q >= 0 && !live && val >= 1 && val <= max && (val & (val - 1)) === 0) v.setUint16(this.qoff(q, Q_SIZE), val, true);
        return;
      }
      case 0x1a: if (q >= 0) v.setUint16(this.qoff(q, Q_VECTOR), val < this.msix.vectors ? val : NO_VECTOR, true); return;
      case 0x1c: if (q >= 0 && !live && val === 1) v.setUint16(this.qoff(q, Q_ENABLE), 1, true); return;
      case 0x20: case 0x24: case 0x28: case 0x2c: case 0x30: case 0x34: {
        if (q < 0 || live) return;
        const field = offset < 0x28 ? Q_DESC : offset < 0x30 ? Q_DRIVER : Q_DEVICE;
        v.setUint32(this.qoff(q, field) + (offset & 4), val, true);
        if (data.length === 8 && (offset & 4) === 0) v.setUint32(this.qoff(q, field) + 4, new DataView(data.buffer, data.byteOffset).getUint32(4, true), true);
        return;
      }
      default:
        return; // read-only fields
    }
  }

  private writeStatus(val: number): void {
    const v = this.s.view;
    const old = v.getUint8(T_STATUS);
    if (val === 0) {
      this.resetState(this.s);
      if (old !== 0) {
        const seq = Atomics.add(this.s.i32, T_RESET_ASKED / 4, 1) + 1;
        this.opts.events({ type: 'virtio-reset', device: this.opts.index, name: this.name, seq });
        // As Cloud Hypervisor resets on the vCPU: the write returns once the device stopped using the queues, since a
        // driver that then reads 0 reuses their memory. Waited for outside the PCI lock, which the main thread takes.
        if (!isMainThread) afterBusAccess(() => this.waitReset(seq));
      }
      return;
    }
    let next = val;
    if (val & STATUS_FEATURES_OK && !(old & STATUS_FEATURES_OK)) {
      const offered = this.device.features() | VERSION_1;
      const acked = this.driverFeatures();
      if ((acked & ~offered) !== 0n || !(acked & VERSION_1)) {
        guestLog.warn({ device: this.name, acked: acked.toString(16), offered: offered.toString(16) }, 'driver acked unoffered features');
        next &= ~STATUS_FEATURES_OK;
      }
    }
    if (next & STATUS_DRIVER_OK && !(old & STATUS_DRIVER_OK)) {
      const event = this.activation(next);
      if (!event) next = (next & ~STATUS_DRIVER_OK) | STATUS_NEEDS_RESET;
      v.setUint8(T_STATUS, next);
      if (event) this.opts.events(event);
      return;
    }
    v.setUint8(T_STATUS, next);
  }

  private activation(status: number): VirtioActivateEvent | null {
    if (!(status & STATUS_FEATURES_OK)) {
      guestLog.warn({ device: this.name }, 'DRIVER_OK without FEATURES_OK');
      return null;
    }
    const v = this.s.view;
    const queues: QueueActivation[] = [];
    for (let q = 0; q < this.numQueues; q++) {
      if (!v.getUint16(this.qoff(q, Q_ENABLE), true)) continue;
      const vec = v.getUint16(this.qoff(q, Q_VECTOR), true);
      const a: QueueActivation = {
        index: q,
        size: v.getUint16(this.qoff(q, Q_SIZE), true),
        descAddr: this.u64(this.qoff(q, Q_DESC)),
        availAddr: this.u64(this.qoff(q, Q_DRIVER)),
        usedAddr: this.u64(this.qoff(q, Q_DEVICE)),
        vector: vec === NO_VECTOR ? null : vec,
        gsi: vec === NO_VECTOR ? null : this.msix.gsi(vec),
        notifyAddr: this.notifyAddress(q),
      };
      if (a.descAddr % 16 || a.availAddr % 2 || a.usedAddr % 4 || a.descAddr > 2 ** 52 || a.availAddr > 2 ** 52 || a.usedAddr > 2 ** 52) {
        guestLog.warn({ device: this.name, queue: a }, 'misaligned or out-of-range queue addresses');
        return null;
      }
      queues.push(a);
    }
    const cfgVec = v.getUint16(T_MSIX_CONFIG, true);
    return {
      type: 'virtio-activate',
      device: this.opts.index,
      name: this.name,
      features: this.driverFeatures(),
      queues,
      configGsi: cfgVec === NO_VECTOR ? null : this.msix.gsi(cfgVec),
      resets: this.resetsAsked,
    };
  }

  private waitReset(seq: number): void {
    if (!waitForCount(this.s.i32, T_RESET_DONE / 4, seq, RESET_WAIT_MS)) {
      log.warn({ device: this.name, waitedMs: RESET_WAIT_MS }, 'device not yet stopped after the guest reset it; the guest goes on');
    }
  }

  /** Resets the guest has asked for so far: an activation event made before the last of them is stale. */
  get resetsAsked(): number {
    return Atomics.load(this.s.i32, T_RESET_ASKED / 4);
  }

  /** The main thread stopped the device for reset `seq`: the vCPU that asked for it goes on. */
  resetDone(seq: number): void {
    Atomics.store(this.s.i32, T_RESET_DONE / 4, seq);
    Atomics.notify(this.s.i32, T_RESET_DONE / 4);
  }

  /** The main thread takes a notify event: later bus notifies post a new one. */
  takeNotify(): void {
    Atomics.store(this.s.u8, T_NOTIFY_POSTED, 0);
  }

  /**
   * The device failed where the guest cannot see it (activation on the main thread): DEVICE_NEEDS_RESET and a config
   * interrupt, as virtio 1.x 2.1.2 asks, so the driver learns it instead of waiting on queues nobody serves.
   */
  needsReset(): void {
    this.opts.root.lock.with(() => {
      const st = this.s.u8[T_STATUS];
      if (st !== 0) this.s.u8[T_STATUS] = st | STATUS_NEEDS_RESET;
    });
    this.configChanged();
  }

  /** Sets ISR bit 1 and signals the config vector (device config changed; main thread). */
  configChanged(): void {
    this.opts.root.lock.with(() => {
      this.s.u8[T_ISR] |= 2;
      this.s.u8[T_GENERATION] = (this.s.u8[T_GENERATION] + 1) & 0xff;
    });
    const vec = this.s.view.getUint16(T_MSIX_CONFIG, true);
    this.vectorInterrupt(vec === NO_VECTOR ? null : vec).trigger();
  }

  driverFeatures(): bigint {
    const v = this.s.view;
    return (BigInt(v.getUint32(T_GF_HI, true)) << 32n) | BigInt(v.getUint32(T_GF_LO, true));
  }

  private resetState(b: ArenaBlock): void {
    const gen = b.u8[T_GENERATION];
    const asked = b.i32[T_RESET_ASKED / 4];
    const done = b.i32[T_RESET_DONE / 4];
    b.u8.fill(0);
    b.u8[T_GENERATION] = gen;
    b.i32[T_RESET_ASKED / 4] = asked;
    b.i32[T_RESET_DONE / 4] = done;
    b.view.setUint16(T_MSIX_CONFIG, NO_VECTOR, true);
    for (let q = 0; q < this.device.queueMaxSizes.length; q++) {
      b.view.setUint16(T_QUEUES + q * Q_STRIDE + Q_SIZE, this.device.queueMaxSizes[q], true);
      b.view.setUint16(T_QUEUES + q * Q_STRIDE + Q_VECTOR, NO_VECTOR, true);
    }
  }

  private selectedQueue(): number {
    const q = this.s.view.getUint16(T_QSELECT, true);
    return q < this.numQueues ? q : -1;
  }

  private qoff(q: number, field: number): number {
    return T_QUEUES + q * Q_STRIDE + field;
  }

  private u64(off: number): number {
    return this.s.view.getUint32(off, true) + this.s.view.getUint32(off + 4, true) * 2 ** 32;
  }

  private addVendorCap(type: number, offset: number, length: number, multiplier?: number): void {
    const body = new Uint8Array(multiplier === undefined ? 14 : 18);
    const dv = new DataView(body.buffer);
    body[0] = body.length + 2; // cap_len includes id and next
    body[1] = type;
    body[2] = 0; // BAR0
    dv.setUint32(6, offset, true);
    dv.setUint32(10, length, true);
    if (multiplier !== undefined) dv.setUint32(14, multiplier, true);
    this.config.addCapability(CAP_VENDOR, body);
  }

  /** VIRTIO_PCI_CAP_PCI_CFG: a window into BAR0 through config space (required by the spec, used by firmware). */
  private addPciCfgCap(): void {
    const body = new Uint8Array(18);
    body[0] = 20;
    body[1] = CFG_PCI;
    let capOff = 0;
    capOff = this.config.addCapability(
      CAP_VENDOR,
      body,
      [
        { offset: 4, len: 1, mask: 0xff }, // bar
        { offset: 8, len: 4, mask: 0xffffffff }, // offset
        { offset: 12, len: 4, mask: 0xffffffff }, // length
        { offset: 16, len: 4, mask: 0xffffffff }, // data
      ],
      (off, len) => {
        if (off < capOff + 20 && off + len > capOff + 16) this.pciCfgAccess(capOff, true);
      },
      (off, len) => {
        if (off < capOff + 20 && off + len > capOff + 16) this.pciCfgAccess(capOff, false);
      },
    );
  }

  private pciCfgAccess(capOff: number, write: boolean): void {
    const r = this.config.regs;
    const bar = r.getUint8(capOff + 4);
    const off = r.getUint32(capOff + 8, true);
    const len = r.getUint32(capOff + 12, true);
    if (bar !== 0 || (len !== 1 && len !== 2 && len !== 4) || off % len !== 0 || off + len > VIRTIO_BAR_SIZE) return;
    const buf = new Uint8Array(r.buffer, r.byteOffset + capOff + 16, len);
    if (write) this.barWrite(off, buf.slice());
    else {
      const tmp = new Uint8Array(len);
      this.barRead(off, tmp);
      buf.set(tmp);
    }
  }
}
