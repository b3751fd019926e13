import type { Bus } from '../devices/bus.js';
import type { ArenaBlock, ArenaLock, SharedArena } from '../devices/shared-state.js';
import type { BusDevice } from '../devices/types.js';
import { PciConfig, PciError, type PciWindow } from './config.js';

export const PCI_CONFIG_IO_BASE = 0xcf8;
export const PCI_CONFIG_IO_LEN = 8;
export const PCI_ECAM_BASE = 0xe800_0000;
export const PCI_ECAM_BUS0_LEN = 1 << 20;
export const PCI_SLOTS = 32;

export const HOST_BRIDGE_VENDOR = 0x8086;
export const HOST_BRIDGE_DEVICE = 0x0d57;

/** What the root needs from a function on bus 0. */
export interface PciFunction {
  readonly config: PciConfig;
}

/**
 * Bus 0 of segment 0: host bridge at 00:00.0, devices in the next free slots (function 0 only).
 * Config space is reachable both through 0xCF8/0xCFC and ECAM; both take the one PCI lock, which the
 * functions' BARs share too (config writes can relocate BARs and toggle MSI-X).
 */
export class PciRoot {
  readonly lock: ArenaLock;
  private readonly slots: (PciFunction | null)[] = new Array(PCI_SLOTS).fill(null);
  private readonly reserved = new Set<number>();

  constructor(
    private readonly arena: SharedArena,
    readonly mmio: Bus,
    readonly windows: readonly PciWindow[],
  ) {
    this.lock = arena.lock('pci');
    const bridge = new PciConfig(arena, 'host-bridge', {
      vendor: HOST_BRIDGE_VENDOR,
      device: HOST_BRIDGE_DEVICE,
      revision: 0,
      classCode: 0x060000,
    }, mmio, windows);
    this.slots[0] = { config: bridge };
  }

  /** Keeps slots for the functions that ask for them (pci_device_id): the next free slot skips them. */
  reserve(slots: readonly number[]): void {
    for (const s of slots) {
      if (!Number.isInteger(s) || s < 1 || s >= PCI_SLOTS || this.slots[s] !== null || this.reserved.has(s)) {
        throw new PciError(`PCI slot ${s} cannot be given (out of range, the host bridge's, or taken)`, { slot: s });
      }
      this.reserved.add(s);
    }
  }

  /** Places a function in `slot` (reserved for it) or the next free one, and returns its device number. */
  add(fn: PciFunction, slot?: number): number {
    let at: number;
    if (slot !== undefined) {
      if (!this.reserved.delete(slot) || this.slots[slot] !== null) throw new PciError(`PCI slot ${slot} was not kept for ${fn.config.name}`, { slot });
      at = slot;
    } else {
      at = this.slots.findIndex((f, i) => f === null && !this.reserved.has(i));
      if (at < 0) throw new PciError('PCI bus 0 is full', { name: fn.config.name });
    }
    this.slots[at] = fn;
    return at;
  }

  function(slot: number, fnNo = 0): PciFunction | null {
    if (fnNo !== 0 || slot < 0 || slot >= PCI_SLOTS) return null;
    return this.slots[slot];
  }

  configRead(bus: number, slot: number, fnNo: number, offset: number, data: Uint8Array): void {
    const f = bus === 0 ? this.function(slot, fnNo) : null;
    if (!f) {
      data.fill(0xff); // no device: vendor id reads 0xffff
      return;
    }
    f.config.read(offset, data);
  }

  configWrite(bus: number, slot: number, fnNo: number, offset: number, data: Uint8Array): void {
    const f = bus === 0 ? this.function(slot, fnNo) : null;
    f?.config.write(offset, data);
  }

  /** 0xCF8 address register + 0xCFC data window. */
  configIo(): BusDevice {
    const addr: ArenaBlock = this.arena.alloc('pci:cf8', 4);
    return {
      lock: this.lock,
      read: (offset, data) => {
        if (offset < 4) {
          copyField(addr.u8, offset, data);
          return;
        }
        const a = addr.view.getUint32(0, true);
        if (!(a & 0x8000_0000) || offset + data.length > 8) {
          data.fill(0xff);
          return;
        }
        this.configRead((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7, (a & 0xfc) + offset - 4, data);
      },
      write: (offset, data) => {
        if (offset < 4) {
          if (offset === 0 && data.length === 4) addr.u8.set(data);
          return;
        }
        const a = addr.view.getUint32(0, true);
        if (!(a & 0x8000_0000) || offset + data.length > 8) return;
        this.configWrite((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7, (a & 0xfc) + offset - 4, data);
      },
    };
  }

  /** ECAM window for bus 0: offset = slot << 15 | fn << 12 | register. */
  ecam(): BusDevice {
    return {
      lock: this.lock,
      read: (offset, data) => {
        const reg = offset & 0xfff;
        if (reg + data.length > 0x1000) {
          data.fill(0xff);
          return;
        }
        this.configRead(offset >> 20, (offset >> 15) & 0x1f, (offset >> 12) & 7, reg, data);
      },
      write: (offset, data) => {
        const reg = offset & 0xfff;
        if (reg + data.length > 0x1000) return;
        this.configWrite(offset >> 20, (offset >> 15) & 0x1f, (offset >> 12) & 7, reg, data);
      },
    };
  }
}

function copyField(src: Uint8Array, offset: number, data: Uint8Array): void {
  for (let i = 0; i < data.length; i++) data[i] = offset + i < 4 ? src[offset + i] : 0xff;
}
