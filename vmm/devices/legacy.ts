import { logger } from '../../protocol/log.js';
import type { ArenaBlock, ArenaLock, SharedArena } from './shared-state.js';
import type { BusDevice, EventSink, Interrupt } from './types.js';

const log = logger('legacy');

/** i8042 at 0x60..0x64: only what guests use to reboot (command 0xFE on 0x64 pulses the reset line). */
export class I8042 implements BusDevice {
  static readonly BASE = 0x60;
  static readonly LEN = 5;
  constructor(private readonly events: EventSink) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0); // status 0: no data, input buffer empty
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === 4 && data[0] === 0xfe) this.events({ type: 'reset', source: 'i8042' });
  }
}

export interface CmosOptions {
  /** RAM below 4 GiB and above it, in bytes (reported to firmware in 64 KiB units). */
  memBelow4g: number;
  memAbove4g: number;
  now?: () => Date;
}

const MB16 = 16 << 20;
const KB64 = 64 << 10;

/** CMOS RTC at 0x70 (index) / 0x71 (data): wall clock in BCD + the memory-size bytes firmware reads. */
export class Cmos implements BusDevice {
  static readonly BASE = 0x70;
  static readonly LEN = 2;
  private readonly s: ArenaBlock;

  constructor(
    arena: SharedArena,
    private readonly opts: CmosOptions,
  ) {
    this.s = arena.alloc('dev:cmos', 132); // 128 data bytes + index
    const d = this.s.u8;
    const below = Math.min(0xffff, Math.max(0, Math.floor((opts.memBelow4g - MB16) / KB64)));
    d[0x34] = below & 0xff;
    d[0x35] = below >> 8;
    const above = Math.min(0xffffff, Math.floor(opts.memAbove4g / KB64));
    d[0x5b] = above & 0xff;
    d[0x5c] = (above >> 8) & 0xff;
    d[0x5d] = (above >> 16) & 0xff;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = offset === 0 ? this.s.u8[128] : this.readData(this.s.u8[128] & 0x7f);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset === 0) {
      this.s.u8[128] = data[0] & 0x7f; // bit 7 is the NMI mask
      return;
    }
    const idx = this.s.u8[128] & 0x7f;
    if (idx >= 0x0a && idx !== 0x0c && idx !== 0x0d) this.s.u8[idx] = data[0]; // clock registers are read-only
  }

  private readData(idx: number): number {
    const t = (this.opts.now ?? (() => new Date()))();
    switch (idx) {
      case 0x00: return bcd(t.getUTCSeconds());
      case 0x02: return bcd(t.getUTCMinutes());
      case 0x04: return bcd(t.getUTCHours());
      case 0x06: return bcd(t.getUTCDay() + 1);
      case 0x07: return bcd(t.getUTCDate());
      case 0x08: return bcd(t.getUTCMonth() + 1);
      case 0x09: return bcd(t.getUTCFullYear() % 100);
      case 0x32: return bcd(Math.floor(t.getUTCFullYear() / 100));
      case 0x0a: return 0x26; // UIP clear, 32.768 kHz divider, 1024 Hz rate
      case 0x0b: return 0x02; // 24-hour mode, BCD
      case 0x0c: return 0x00;
      case 0x0d: return 0x80; // RAM/time valid
      default: return this.s.u8[idx];
    }
  }
}

function bcd(v: number): number {
  return ((Math.floor(v / 10) % 10) << 4) | (v % 10);
}

/**
 * ACPI sleep control/status + reset register, one port at 0x600 (FADT points all three here, like
 * Cloud Hypervisor): SLP_TYP=5 with SLP_EN → poweroff, the reset value → reset.
 */
export class AcpiPmDevice implements BusDevice {
  static readonly BASE = 0x600;
  static readonly LEN = 8;
  static readonly RESET_VALUE = 1;
  static readonly S5_TYPE = 5;
  constructor(private readonly events: EventSink) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset !== 0) return;
    const v = data[0];
    if (v === AcpiPmDevice.RESET_VALUE) {
      this.events({ type: 'reset', source: 'acpi' });
    } else if (v & 0x20 && ((v >> 2) & 7) === AcpiPmDevice.S5_TYPE) {
      this.events({ type: 'poweroff', source: 'acpi' });
    }
  }
}

/** ACPI Generic Event Device notification bits (the DSDT's _EVT tests them). */
export const GED_POWER_BUTTON = 8;

/** GED: one MMIO byte the guest's _EVT reads (and thereby clears) after the GED interrupt. */
export class AcpiGed implements BusDevice {
  static readonly LEN = 1;
  readonly lock: ArenaLock;
  private readonly s: ArenaBlock;
  constructor(
    arena: SharedArena,
    private readonly irq: Interrupt | null,
  ) {
    this.lock = arena.lock('ged');
    this.s = arena.alloc('dev:ged', 4);
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.s.u8[0];
    this.s.u8[0] = 0;
  }

  write(): void {}

  /** Raise a notification (e.g. GED_POWER_BUTTON for an ACPI shutdown request). Main thread. */
  notify(bits: number): void {
    this.lock.with(() => {
      this.s.u8[0] |= bits;
    });
    this.irq?.trigger();
  }
}

/** POST/debug port 0x80: firmware and kernels write progress codes; logged at debug level. */
export class DebugPort implements BusDevice {
  static readonly BASE = 0x80;
  static readonly LEN = 1;
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  write(_offset: number, data: Uint8Array): void {
    log.debug({ code: data[0] }, 'debug port');
  }
}
