import * as a from './aml.js';
import { sdt } from './tables.js';

export interface DsdtOptions {
  vcpus: number;
  pciMmio32: { base: number; size: number };
  pciMmio64: { base: number; size: number };
  pciIo: { base: number; size: number };
  serial: { port: number; gsi: number } | null;
  ged: { addr: number; gsi: number };
}

/** DSDT: CPUs, PCI host bridge, COM1, power button through the GED, and the S5 sleep package. */
export function dsdt(o: DsdtOptions): Uint8Array {
  const sb: a.Aml[] = [];
  for (let i = 0; i < o.vcpus; i++) {
    sb.push(
      a.device(`C${i.toString(16).toUpperCase().padStart(3, '0')}`,
        a.name('_HID', a.string('ACPI0007')),
        a.name('_UID', a.integer(i)),
      ),
    );
  }
  sb.push(
    a.device('PCI0',
      a.name('_HID', a.eisaId('PNP0A08')),
      a.name('_CID', a.eisaId('PNP0A03')),
      a.name('_SEG', a.ZERO),
      a.name('_UID', a.ZERO),
      a.name('_BBN', a.ZERO),
      a.name('_CRS', a.resourceTemplate(
        a.wordBusNumber(0, 0),
        a.io(0xcf8, 0xcf8, 1, 8),
        a.wordIo(0, 0xcf7),
        a.wordIo(o.pciIo.base, o.pciIo.base + o.pciIo.size - 1),
        a.dwordMemory(o.pciMmio32.base, o.pciMmio32.base + o.pciMmio32.size - 1),
        a.qwordMemory(o.pciMmio64.base, o.pciMmio64.base + o.pciMmio64.size - 1),
      )),
    ),
  );
  if (o.serial) {
    sb.push(
      a.device('COM1',
        a.name('_HID', a.eisaId('PNP0501')),
        a.name('_UID', a.ZERO),
        a.name('_STA', a.integer(0x0f)),
        a.name('_CRS', a.resourceTemplate(a.io(o.serial.port, o.serial.port, 1, 8), a.interrupt(o.serial.gsi))),
      ),
    );
  }
  sb.push(
    a.device('PWRB',
      a.name('_HID', a.eisaId('PNP0C0C')),
      a.name('_UID', a.ZERO),
    ),
    a.device('GED_',
      a.name('_HID', a.string('ACPI0013')),
      a.name('_UID', a.ZERO),
      a.name('_CRS', a.resourceTemplate(a.interrupt(o.ged.gsi))),
      a.opRegion('GDST', a.SPACE_SYSTEM_MEMORY, o.ged.addr, 1),
      a.field('GDST', a.FIELD_BYTE_ACC | a.FIELD_NO_LOCK | a.FIELD_WRITE_AS_ZEROS, [['GDAT', 8]]),
      a.method('_EVT', 1, true,
        a.store(a.ref('GDAT'), a.local(0)),
        a.if_(a.and(a.local(0), a.integer(8)), a.notify('\\_SB_.PWRB', a.integer(0x80))),
      ),
    ),
  );
  const aml = a.cat(
    a.scope('\\_SB_', ...sb),
    a.name('_S5_', a.pkg(a.integer(5), a.ZERO)),
  );
  return sdt('DSDT', 2, 'KUMODSDT', aml);
}
