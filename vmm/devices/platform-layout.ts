/** Fixed platform addresses and interrupt numbers (x86_64, Cloud-Hypervisor-like). */
export const SERIAL_PORT = 0x3f8;
export const SERIAL_GSI = 4;
export const GED_GSI = 5;
/** ACPI GED notification byte, in the 32-bit hole below the IOAPIC (nothing else decodes here). */
export const GED_ADDR = 0xfeb0_0000;
export const IOAPIC_ADDR = 0xfec0_0000;
export const LAPIC_ADDR = 0xfee0_0000;
export const IOAPIC_PINS = 24;
/** MSI-X vectors get GSIs from here up (IOAPIC pins are 0..23). */
export const MSI_GSI_BASE = 24;
export const PCI_MMIO32_BASE = 0xc000_0000;
export const PCI_MMIO32_SIZE = 0x2800_0000; // up to the ECAM at 0xE800_0000
export const PCI_IO_WINDOW = { base: 0x1000, size: 0xf000 }; // advertised; no device uses PIO BARs yet
export const RSDP_ADDR = 0xa_0000;

const GiB = 2 ** 30;

/** The 64-bit PCI window: from the first GiB boundary above RAM, bounded by the guest's physical address width. */
export function highMmioWindow(memAbove4g: number, physAddrBits = 39): { base: number; size: number } {
  const base = Math.ceil((4 * GiB + memAbove4g) / GiB) * GiB;
  const top = 2 ** Math.min(physAddrBits, 52);
  const size = Math.min(64 * GiB, top - base);
  if (size < GiB) throw new RangeError(`no room for the 64-bit PCI window below 2^${physAddrBits}`);
  return { base, size };
}
