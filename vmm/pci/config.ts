import { KumoError } from '../../protocol/errors.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import type { Bus, BusRange } from '../devices/bus.js';
import type { ArenaBlock, SharedArena } from '../devices/shared-state.js';
import type { BusDevice } from '../devices/types.js';

const log = logger('pci');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);

export class PciError extends KumoError {}

export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_BAR0 = 0x10;
export const PCI_CAP_PTR = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
const CMD_MEM = 0x02;
const STATUS_CAP_LIST = 0x10;
const CONFIG_SIZE = 256;
const CAP_START = 0x40;

export interface PciHeader {
  vendor: number;
  device: number;
  revision: number;
  /** class << 16 | subclass << 8 | prog-if */
  classCode: number;
  subsystemVendor?: number;
  subsystemId?: number;
}

export interface PciWindow {
  base: number;
  size: number;
}

export interface PciBarSpec {
  index: number;
  size: number; // power of two, >= 16
  is64: boolean;
  prefetchable: boolean;
  addr: number;
  device: BusDevice;
  name: string;
}

interface Bar {
  spec: PciBarSpec;
  range: BusRange;
}

/** Called after a config write (or before a read) touching [offset, offset+len) of a capability. */
export type ConfigWriteHook = (offset: number, len: number) => void;

/**
 * Type-0 config space of one PCI function, in the arena (so every vCPU sees the same registers), with
 * a per-byte write mask built identically in every thread. BAR writes follow the sizing protocol by
 * construction (the mask keeps the size bits zero) and relocate the BAR's bus range when memory
 * decoding is on and the new address is sane.
 */
export class PciConfig {
  readonly regs: DataView;
  private readonly block: ArenaBlock;
  private readonly mask = new Uint8Array(CONFIG_SIZE);
  private readonly fresh: boolean;
  private readonly bars: Bar[] = [];
  private readonly hooks: { start: number; end: number; fn: ConfigWriteHook }[] = [];
  private readonly readHooks: { start: number; end: number; fn: ConfigWriteHook }[] = [];
  private nextCap = CAP_START;
  private lastCap = 0;

  constructor(
    arena: SharedArena,
    readonly name: string,
    header: PciHeader,
    private readonly mmio: Bus,
    /** Host bridge windows: the guest may only move BARs inside them (so a half-written 64-bit BAR stays put). */
    private readonly windows: readonly PciWindow[] = [],
  ) {
    this.fresh = arena.claim(`pci:${name}`);
    this.block = arena.alloc(`pci:${name}:config`, CONFIG_SIZE);
    this.regs = this.block.view;
    if (this.fresh) {
      const r = this.regs;
      r.setUint16(0x00, header.vendor, true);
      r.setUint16(0x02, header.device, true);
      r.setUint8(0x08, header.revision);
      r.setUint8(0x09, header.classCode & 0xff);
      r.setUint8(0x0a, (header.classCode >> 8) & 0xff);
      r.setUint8(0x0b, (header.classCode >> 16) & 0xff);
      r.setUint16(0x2c, header.subsystemVendor ?? 0, true);
      r.setUint16(0x2e, header.subsystemId ?? 0, true);
      r.setUint8(0x3d, 0); // no INTx pin: MSI-X only
    }
    this.setMask(PCI_COMMAND, 2, 0x0547);
    this.setMask(PCI_INTERRUPT_LINE, 1, 0xff);
  }

  addBar(spec: PciBarSpec): BusRange {
    const { index, size, is64 } = spec;
    if (size < 16 || size & (size - 1) || spec.addr % size !== 0) {
      throw new PciError('bad BAR', { name: this.name, index, size, addr: spec.addr });
    }
    if (index < 0 || index + (is64 ? 1 : 0) > 5) throw new PciError('bad BAR index', { name: this.name, index });
    const range = this.mmio.insert(spec.device, spec.addr, size, `${this.name}:bar${index}`);
    const off = PCI_BAR0 + index * 4;
    const flags = (is64 ? 0x4 : 0) | (spec.prefetchable ? 0x8 : 0);
    if (this.fresh) {
      this.regs.setUint32(off, ((spec.addr % 2 ** 32) | flags) >>> 0, true);
      if (is64) this.regs.setUint32(off + 4, Math.floor(spec.addr / 2 ** 32), true);
    }
    // Writable bits = ~(size-1): an all-ones write then reads back the size mask (sizing probe).
    const lo = size >= 2 ** 32 ? 0 : ~(size - 1) & ~0xf;
    this.setMask(off, 4, lo >>> 0);
    if (is64) this.setMask(off + 4, 4, size > 2 ** 32 ? ~(size / 2 ** 32 - 1) >>> 0 : 0xffffffff);
    this.bars.push({ spec, range });
    return range;
  }

  /** Appends a capability (body excludes the id/next bytes); returns its config offset. */
  addCapability(
    id: number,
    body: Uint8Array,
    writable?: { offset: number; len: number; mask: number }[],
    hook?: ConfigWriteHook,
    readHook?: ConfigWriteHook,
  ): number {
    const off = this.nextCap;
    const len = (2 + body.length + 3) & ~3;
    if (off + len > CONFIG_SIZE) throw new PciError('config space full', { name: this.name, id });
    if (this.fresh) {
      this.regs.setUint8(off, id);
      this.regs.setUint8(off + 1, 0);
      new Uint8Array(this.regs.buffer, this.regs.byteOffset + off + 2, body.length).set(body);
      if (this.lastCap === 0) {
        this.regs.setUint8(PCI_CAP_PTR, off);
        this.regs.setUint16(PCI_STATUS, this.regs.getUint16(PCI_STATUS, true) | STATUS_CAP_LIST, true);
      } else {
        this.regs.setUint8(this.lastCap + 1, off);
      }
    }
    for (const w of writable ?? []) this.setMask(off + w.offset, w.len, w.mask);
    if (hook) this.hooks.push({ start: off, end: off + len, fn: hook });
    if (readHook) this.readHooks.push({ start: off, end: off + len, fn: readHook });
    this.lastCap = off;
    this.nextCap = off + len;
    return off;
  }

  /** Aligned dword read (reg is rounded down to a multiple of 4). */
  readDword(reg: number): number {
    if (reg < 0 || reg >= CONFIG_SIZE) return 0; // extended config space: empty
    return this.regs.getUint32(reg & ~3, true);
  }

  read(offset: number, data: Uint8Array): void {
    const end = offset + data.length;
    for (const h of this.readHooks) if (offset < h.end && end > h.start) h.fn(offset, data.length);
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o < CONFIG_SIZE ? this.regs.getUint8(o) : 0;
    }
  }

  write(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.length > CONFIG_SIZE) return;
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      const m = this.mask[o];
      if (m === 0) continue;
      const old = this.regs.getUint8(o);
      this.regs.setUint8(o, (old & ~m) | (data[i] & m));
    }
    const end = offset + data.length;
    if (offset < PCI_BAR0 + 24 && end > PCI_BAR0) this.applyBars();
    if (offset <= PCI_COMMAND && end > PCI_COMMAND) this.applyBars();
    for (const h of this.hooks) if (offset < h.end && end > h.start) h.fn(offset, data.length);
  }

  barAddress(index: number): number {
    const bar = this.bars.find((b) => b.spec.index === index);
    if (!bar) throw new PciError('no such BAR', { name: this.name, index });
    return bar.range.base;
  }

  private applyBars(): void {
    if (!(this.regs.getUint16(PCI_COMMAND, true) & CMD_MEM)) return;
    for (const { spec, range } of this.bars) {
      const off = PCI_BAR0 + spec.index * 4;
      const lo = this.regs.getUint32(off, true) & ~0xf;
      const hi = spec.is64 ? this.regs.getUint32(off + 4, true) : 0;
      const addr = (lo >>> 0) + hi * 2 ** 32;
      if (addr === range.base) continue;
      if (!this.windows.some((w) => addr >= w.base && addr + spec.size <= w.base + w.size)) {
        continue; // unprogrammed, mid-sizing, or half of a 64-bit update
      }
      try {
        range.move(addr);
        guestLog.info({ device: this.name, bar: spec.index, addr }, 'BAR relocated');
      } catch (err) {
        guestLog.warn({ err, device: this.name, bar: spec.index, addr }, 'BAR relocation refused');
      }
    }
  }

  private setMask(off: number, len: number, mask: number): void {
    for (let i = 0; i < len; i++) this.mask[off + i] = (mask >>> (8 * i)) & 0xff;
  }
}
