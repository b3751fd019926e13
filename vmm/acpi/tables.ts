/** ACPI table encoders (ACPI 6.x §5.2): header + body, checksummed. */

export const OEM_ID = 'KUMO  ';
export const CREATOR_ID = 'KUMO';
const HEADER = 36;

export class TableWriter {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf);
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): this {
    this.ensure(1);
    this.view.setUint8(this.len, v);
    this.len += 1;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.view.setUint16(this.len, v, true);
    this.len += 2;
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.view.setUint32(this.len, v >>> 0, true);
    this.len += 4;
    return this;
  }
  u64(v: number): this {
    this.u32(v % 2 ** 32);
    return this.u32(Math.floor(v / 2 ** 32));
  }
  ascii(s: string, len: number): this {
    const b = new TextEncoder().encode(s.padEnd(len, ' ').slice(0, len));
    return this.bytes(b);
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }
  zeros(n: number): this {
    this.ensure(n);
    this.len += n;
    return this;
  }
  /** Generic Address Structure: space (0 memory, 1 I/O), bit width, access size (1=byte), address. */
  gas(space: number, bitWidth: number, accessSize: number, addr: number): this {
    return this.u8(space).u8(bitWidth).u8(0).u8(accessSize).u64(addr);
  }
  done(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

export function checksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let s = 0;
  for (let i = start; i < end; i++) s = (s + bytes[i]) & 0xff;
  return (0x100 - s) & 0xff;
}

/** Prepends the standard header to `body` and fixes length and checksum. */
export function sdt(signature: string, revision: number, tableId: string, body: Uint8Array): Uint8Array {
  const w = new TableWriter()
    .ascii(signature, 4)
    .u32(HEADER + body.length)
    .u8(revision)
    .u8(0)
    .ascii(OEM_ID, 6)
    .ascii(tableId, 8)
    .u32(1)
    .ascii(CREATOR_ID, 4)
    .u32(1)
    .bytes(body);
  const t = w.done();
  t[9] = checksum(t);
  return t;
}

export function rsdp(xsdtAddr: number): Uint8Array {
  const t = new TableWriter().ascii('RSD PTR ', 8).u8(0).ascii(OEM_ID, 6).u8(2).u32(0).u32(36).u64(xsdtAddr).u8(0).zeros(3).done();
  t[8] = checksum(t, 0, 20);
  t[32] = checksum(t);
  return t;
}

export function xsdt(entries: number[]): Uint8Array {
  const w = new TableWriter();
  for (const e of entries) w.u64(e);
  return sdt('XSDT', 1, 'KUMOXSDT', w.done());
}

export interface FadtOptions {
  dsdtAddr: number;
  /** I/O port of the sleep control/status and reset registers. */
  pmPort: number;
  resetValue: number;
}

const FADT_HW_REDUCED_ACPI = 1 << 20;
const FADT_RESET_REG_SUP = 1 << 10;
const FADT_TMR_VAL_EXT = 1 << 8;
const FADT_PWR_BUTTON = 1 << 4; // power button is a control-method (GED) device
const FADT_SLP_BUTTON = 1 << 5;
const IAPC_VGA_NOT_PRESENT = 1 << 2;

/** FADT revision 6 (276 bytes), hardware-reduced. */
export function fadt(o: FadtOptions): Uint8Array {
  const w = new TableWriter();
  w.u32(0); // 36 FIRMWARE_CTRL
  w.u32(o.dsdtAddr < 2 ** 32 ? o.dsdtAddr : 0); // 40 DSDT
  w.u8(0); // 44 reserved
  w.u8(0); // 45 preferred PM profile: unspecified
  w.u16(0); // 46 SCI_INT: none (hardware-reduced)
  w.u32(0); // 48 SMI_CMD
  w.u8(0).u8(0).u8(0).u8(0); // 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
  w.zeros(32); // 56..87 PM1a/b EVT, PM1a/b CNT, PM2 CNT, PM TMR, GPE0, GPE1 blocks
  w.zeros(8); // 88..95 block lengths, GPE1_BASE, CST_CNT
  w.u16(0).u16(0).u16(0).u16(0); // 96 P_LVL2/3_LAT, FLUSH_SIZE, FLUSH_STRIDE
  w.u8(0).u8(0).u8(0).u8(0).u8(0); // 104 DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, CENTURY
  w.u16(IAPC_VGA_NOT_PRESENT); // 109 IAPC_BOOT_ARCH (no 8042 flag: Linux then skips probing it)
  w.u8(0); // 111 reserved
  w.u32(FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP | FADT_TMR_VAL_EXT | FADT_PWR_BUTTON | FADT_SLP_BUTTON); // 112 flags
  w.gas(1, 8, 1, o.pmPort); // 116 RESET_REG
  w.u8(o.resetValue); // 128 RESET_VALUE
  w.u16(0); // 129 ARM_BOOT_ARCH
  w.u8(0); // 131 FADT minor version
  w.u64(0); // 132 X_FIRMWARE_CTRL
  w.u64(o.dsdtAddr); // 140 X_DSDT
  w.zeros(12 * 8); // 148..243 X_PM1a_EVT .. X_GPE1 blocks
  w.gas(1, 8, 1, o.pmPort); // 244 SLEEP_CONTROL_REG
  w.gas(1, 8, 1, o.pmPort); // 256 SLEEP_STATUS_REG
  w.ascii('KUMOKVM ', 8); // 268 hypervisor vendor identity
  return sdt('FACP', 6, 'KUMOFACP', w.done());
}

export interface MadtOptions {
  vcpus: number;
  lapicAddr: number;
  ioapicAddr: number;
  ioapicId?: number;
  overrides?: { source: number; gsi: number; flags: number }[];
}

export function madt(o: MadtOptions): Uint8Array {
  const w = new TableWriter().u32(o.lapicAddr).u32(0); // flags: no dual 8259 described
  for (let i = 0; i < o.vcpus; i++) w.u8(0).u8(8).u8(i).u8(i).u32(1); // Processor Local APIC, enabled
  w.u8(1).u8(12).u8(o.ioapicId ?? 0).u8(0).u32(o.ioapicAddr).u32(0); // I/O APIC, GSI base 0
  for (const iso of o.overrides ?? []) w.u8(2).u8(10).u8(0).u8(iso.source).u32(iso.gsi).u16(iso.flags);
  return sdt('APIC', 5, 'KUMOAPIC', w.done());
}

export function mcfg(ecamBase: number, startBus: number, endBus: number): Uint8Array {
  const w = new TableWriter().zeros(8).u64(ecamBase).u16(0).u8(startBus).u8(endBus).u32(0);
  return sdt('MCFG', 1, 'KUMOMCFG', w.done());
}
