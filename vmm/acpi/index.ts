import { AcpiPmDevice } from '../devices/legacy.js';
import {
  GED_ADDR,
  GED_GSI,
  IOAPIC_ADDR,
  LAPIC_ADDR,
  PCI_IO_WINDOW,
  PCI_MMIO32_BASE,
  PCI_MMIO32_SIZE,
  RSDP_ADDR,
  SERIAL_GSI,
  SERIAL_PORT,
} from '../devices/platform-layout.js';
import { PCI_ECAM_BASE } from '../pci/root.js';
import { dsdt } from './dsdt.js';
import { fadt, madt, mcfg, rsdp, xsdt } from './tables.js';

export interface AcpiOptions {
  vcpus: number;
  /** The 64-bit PCI window (Platform.highMmio). */
  pciMmio64: { base: number; size: number };
  serial?: boolean;
}

export interface AcpiBlob {
  name: string;
  addr: number;
  bytes: Uint8Array;
}

/**
 * All ACPI tables, laid out from the RSDP at 0xA0000 upwards (EBDA area, below the 640 KiB-1 MiB
 * hole's ROM range): RSDP, DSDT, FACP, APIC, MCFG, XSDT, each 16-byte aligned.
 */
export function buildAcpiTables(o: AcpiOptions): { rsdpAddr: number; blobs: AcpiBlob[] } {
  if (!Number.isInteger(o.vcpus) || o.vcpus < 1 || o.vcpus > 254) throw new RangeError(`bad vCPU count: ${o.vcpus}`);
  const blobs: AcpiBlob[] = [];
  let next = RSDP_ADDR + 64;
  const place = (name: string, bytes: Uint8Array): number => {
    const addr = next;
    blobs.push({ name, addr, bytes });
    next = Math.ceil((addr + bytes.length) / 16) * 16;
    return addr;
  };
  const dsdtAddr = place(
    'DSDT',
    dsdt({
      vcpus: o.vcpus,
      pciMmio32: { base: PCI_MMIO32_BASE, size: PCI_MMIO32_SIZE },
      pciMmio64: o.pciMmio64,
      pciIo: PCI_IO_WINDOW,
      serial: o.serial === false ? null : { port: SERIAL_PORT, gsi: SERIAL_GSI },
      ged: { addr: GED_ADDR, gsi: GED_GSI },
    }),
  );
  const tables = [
    place('FACP', fadt({ dsdtAddr, pmPort: AcpiPmDevice.BASE, resetValue: AcpiPmDevice.RESET_VALUE })),
    place('APIC', madt({ vcpus: o.vcpus, lapicAddr: LAPIC_ADDR, ioapicAddr: IOAPIC_ADDR })),
    place('MCFG', mcfg(PCI_ECAM_BASE, 0, 0)),
  ];
  const xsdtAddr = place('XSDT', xsdt(tables));
  blobs.unshift({ name: 'RSDP', addr: RSDP_ADDR, bytes: rsdp(xsdtAddr) });
  if (next > 0xc0000) throw new RangeError('ACPI tables overflow the EBDA area');
  return { rsdpAddr: RSDP_ADDR, blobs };
}
