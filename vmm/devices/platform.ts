import { PciRoot, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PCI_ECAM_BASE, PCI_ECAM_BUS0_LEN } from '../pci/root.js';
import type { VirtioDevice } from '../virtio/device.js';
import { VirtioPciDevice, VIRTIO_BAR_SIZE } from '../virtio/pci-transport.js';
import { Bus } from './bus.js';
import { AcpiGed, AcpiPmDevice, Cmos, DebugPort, I8042 } from './legacy.js';
import {
  GED_ADDR,
  GED_GSI,
  highMmioWindow,
  MSI_GSI_BASE,
  PCI_MMIO32_BASE,
  PCI_MMIO32_SIZE,
  SERIAL_GSI,
  SERIAL_PORT,
} from './platform-layout.js';
import { Serial, SERIAL_PORT_LEN } from './serial.js';
import type { SharedArena } from './shared-state.js';
import type { EventSink, Interrupt, InterruptRoutes, OutputSink } from './types.js';

export interface PlatformOptions {
  arena: SharedArena;
  vcpus: number;
  /** Guest RAM in bytes below 4 GiB and above it (for CMOS and the 64-bit PCI window). */
  memBelow4g: number;
  memAbove4g: number;
  physAddrBits?: number;
  /** Serial output in this thread; null drops it (threads that never run the guest). */
  serialOutput: OutputSink | null;
  /** false: no UART at 0x3f8 at all (--serial off, as Cloud Hypervisor); --serial null keeps one that discards. */
  serialPort?: boolean;
  events: EventSink;
  /** The irqfd-backed interrupt of a GSI; called for every GSI the platform uses, in a fixed order. */
  irq(gsi: number): Interrupt;
  routes: InterruptRoutes;
  /** Same devices, same order, in every thread. */
  virtio: VirtioDevice[];
  debugPort?: boolean;
}

export interface Platform {
  pio: Bus;
  mmio: Bus;
  serial: Serial | null;
  ged: AcpiGed;
  pci: PciRoot;
  virtio: VirtioPciDevice[];
  /** Every GSI used (serial, GED, all MSI-X vectors). */
  gsis: number[];
  highMmio: { base: number; size: number };
}

/**
 * Builds the whole device model over the arena. Deterministic: the same options (modulo sinks and
 * interrupt objects) give the same arena layout, so each vCPU worker and the main thread build
 * identical models that share register state.
 */
export function buildPlatform(o: PlatformOptions): Platform {
  const { arena } = o;
  const pio = new Bus('pio', arena);
  const mmio = new Bus('mmio', arena);
  const gsis: number[] = [];
  const irq = (gsi: number): Interrupt => {
    gsis.push(gsi);
    return o.irq(gsi);
  };

  const serial = o.serialPort === false ? null : new Serial(arena, { irq: irq(SERIAL_GSI), output: o.serialOutput });
  if (serial) pio.insert(serial, SERIAL_PORT, SERIAL_PORT_LEN, 'serial');
  pio.insert(new I8042(o.events), I8042.BASE, I8042.LEN, 'i8042');
  pio.insert(new Cmos(arena, { memBelow4g: o.memBelow4g, memAbove4g: o.memAbove4g }), Cmos.BASE, Cmos.LEN, 'cmos');
  pio.insert(new AcpiPmDevice(o.events), AcpiPmDevice.BASE, AcpiPmDevice.LEN, 'acpi-pm');
  if (o.debugPort !== false) pio.insert(new DebugPort(), DebugPort.BASE, DebugPort.LEN, 'debug');
  const ged = new AcpiGed(arena, irq(GED_GSI));
  mmio.insert(ged, GED_ADDR, AcpiGed.LEN, 'ged');

  const highMmio = highMmioWindow(o.memAbove4g, o.physAddrBits);
  const pci = new PciRoot(arena, mmio, [{ base: PCI_MMIO32_BASE, size: PCI_MMIO32_SIZE }, highMmio]);
  pio.insert(pci.configIo(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, 'pci-config');
  mmio.insert(pci.ecam(), PCI_ECAM_BASE, PCI_ECAM_BUS0_LEN, 'pci-ecam');

  // Slots devices ask for are theirs before any device takes the next free one.
  pci.reserve(o.virtio.flatMap((d) => (d.pciSlot === undefined ? [] : [d.pciSlot])));
  let barAddr = highMmio.base;
  let gsi = MSI_GSI_BASE;
  const virtio = o.virtio.map((dev, index) => {
    const vectors = dev.queueMaxSizes.length + 1;
    const t = new VirtioPciDevice(arena, dev, {
      index,
      root: pci,
      barAddr,
      gsiBase: gsi,
      routes: o.routes,
      irq,
      events: o.events,
    });
    barAddr += VIRTIO_BAR_SIZE;
    gsi += vectors;
    return t;
  });
  return { pio, mmio, serial, ged, pci, virtio, gsis, highMmio };
}
