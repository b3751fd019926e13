// Cloud Hypervisor's x86_64 guest physical layout (arch/src/x86_64/layout.rs), as kumo uses it.

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

// Low memory, fixed boot structures
export const BOOT_GDT_START = 0x500;
/** After kumo's five-entry GDT (CH's 0x520 would overwrite its TSS descriptor: CH's GDT has four). */
export const BOOT_IDT_START = 0x528;
export const PVH_INFO_START = 0x6000;
export const MODLIST_START = 0x6040;
export const MEMMAP_START = 0x7000;
export const ZERO_PAGE_START = 0x7000;
export const BOOT_STACK_POINTER = 0x8ff0;
export const PML4_START = 0x9000;
export const PDPTE_START = 0xa000;
export const PDE_START = 0xb000;
export const CMDLINE_START = 0x20000;
export const CMDLINE_MAX_SIZE = 0x10000;
/** End of conventional low RAM; the EBDA/ACPI area starts here (RSDP at 0xA0000). */
export const EBDA_START = 0xa0000;
export const RSDP_POINTER = 0xa0000;
export const HIGH_RAM_START = 0x10_0000;
/** Where a CPU restarting in real mode begins (F000:FFF0): Linux's BIOS reboot path jumps there. */
export const RESET_VECTOR = 0xffff0;

// The 32-bit hole
export const MEM_32BIT_GAP_START = 3 * GiB; // 0xC000_0000
export const MEM_32BIT_DEVICES_START = 0xc000_0000;
export const MEM_32BIT_DEVICES_SIZE = 640 * MiB;
export const PCI_MMCONFIG_START = 0xe800_0000;
export const PCI_MMCONFIG_SIZE = 256 * MiB;
export const MEM_32BIT_RESERVED_START = 0xf800_0000; // 3.875 GiB
export const KVM_TSS_START = 0xf800_0000;
export const KVM_TSS_SIZE = 3 * 4096;
export const KVM_IDENTITY_MAP_START = KVM_TSS_START + KVM_TSS_SIZE;
export const IOAPIC_START = 0xfec0_0000;
export const APIC_START = 0xfee0_0000;
export const RAM_64BIT_START = 4 * GiB;

/** Guest physical address bits kumo exposes (CH's default max_phys_bits). */
export const MAX_PHYS_BITS = 46;
export const MAX_GUEST_ADDR = 2 ** MAX_PHYS_BITS;

export interface RamRange {
  guestAddr: number;
  size: number;
}

/** RAM ranges for `size` bytes: from 0 up to the 32-bit hole, the rest from 4 GiB. */
export function ramRanges(size: number): RamRange[] {
  const low = Math.min(size, MEM_32BIT_GAP_START);
  const out: RamRange[] = [{ guestAddr: 0, size: low }];
  if (size > low) out.push({ guestAddr: RAM_64BIT_START, size: size - low });
  return out;
}

/** First guest address after RAM (where 64-bit device MMIO may start). */
export function ramEnd(size: number): number {
  const r = ramRanges(size);
  const last = r[r.length - 1];
  return last.guestAddr + last.size;
}

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** The guest's memory map: low RAM below the EBDA, RAM from 1 MiB, RAM above 4 GiB; ECAM reserved. */
export function e820Map(size: number): E820Entry[] {
  const out: E820Entry[] = [];
  for (const r of ramRanges(size)) {
    if (r.guestAddr === 0) {
      out.push({ addr: 0, size: Math.min(r.size, EBDA_START), type: E820_RAM });
      if (r.size > HIGH_RAM_START) out.push({ addr: HIGH_RAM_START, size: r.size - HIGH_RAM_START, type: E820_RAM });
    } else {
      out.push({ addr: r.guestAddr, size: r.size, type: E820_RAM });
    }
  }
  out.push({ addr: PCI_MMCONFIG_START, size: PCI_MMCONFIG_SIZE, type: E820_RESERVED });
  return out;
}
