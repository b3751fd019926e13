// Initial segment/paging state for the two boot entry modes (flat GDT like Cloud Hypervisor's).
import type { GuestMemory } from '../../protocol/memory/index.js';
import type { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { gdtEntry, segmentFromDescriptor, type Sregs } from '../kvm/structs.js';
import { BOOT_GDT_START, BOOT_IDT_START, PDE_START, PDPTE_START, PML4_START } from '../memory/layout.js';

// GDT: null, 64-bit code, 32-bit code, data, TSS
const GDT = [
  0n,
  gdtEntry(0xa09b, 0, 0xfffff), // 0x08: code, 64-bit (L=1)
  gdtEntry(0xc09b, 0, 0xfffff), // 0x10: code, 32-bit (D=1)
  gdtEntry(0xc093, 0, 0xfffff), // 0x18: data
  gdtEntry(0x808b, 0, 0xfffff), // 0x20: TSS
];
const SEL_CODE64 = 0x08;
const SEL_CODE32 = 0x10;
const SEL_DATA = 0x18;
const SEL_TSS = 0x20;

const CR0_PE = 1n;
const CR0_ET = 0x10n;
const CR0_PG = 0x8000_0000n;
const CR4_PAE = 0x20n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;

/** Number of 1 GiB ranges identity-mapped with 2 MiB pages for a 64-bit entry (the 32-bit space). */
const MAPPED_GIB = 4;

if (BOOT_GDT_START + GDT.length * 8 > BOOT_IDT_START) throw new Error('the boot GDT overlaps the boot IDT');

function writeGdt(mem: GuestMemory): void {
  GDT.forEach((d, i) => mem.writeU64Big(BOOT_GDT_START + i * 8, d));
  mem.writeU64(BOOT_IDT_START, 0);
}

function applySegments(s: Sregs, code: number): void {
  s.gdt = { base: BigInt(BOOT_GDT_START), limit: GDT.length * 8 - 1 };
  s.idt = { base: BigInt(BOOT_IDT_START), limit: 7 };
  s.cs = segmentFromDescriptor(GDT[code >> 3], code);
  const data = segmentFromDescriptor(GDT[SEL_DATA >> 3], SEL_DATA);
  s.ds = data;
  s.es = { ...data };
  s.fs = { ...data };
  s.gs = { ...data };
  s.ss = { ...data };
  s.tr = segmentFromDescriptor(GDT[SEL_TSS >> 3], SEL_TSS);
}

/** PVH: 32-bit protected mode, flat segments, paging off. */
export function setupProtectedMode(mem: GuestMemory, vcpu: KvmVcpuFd): void {
  writeGdt(mem);
  const s = vcpu.getSregs();
  applySegments(s, SEL_CODE32);
  s.cr0 = (s.cr0 | CR0_PE | CR0_ET) & ~CR0_PG;
  s.cr4 = 0n;
  s.efer = 0n;
  vcpu.setSregs(s);
}

/** Identity page tables for the low 4 GiB: PML4 → one PDPT → four PDs of 2 MiB pages. */
function writeIdentityPageTables(mem: GuestMemory): void {
  mem.writeU64(PML4_START, PDPTE_START | 0x3);
  for (let g = 0; g < MAPPED_GIB; g++) {
    const pd = PDE_START + g * 0x1000;
    mem.writeU64(PDPTE_START + g * 8, pd | 0x3);
    for (let i = 0; i < 512; i++) mem.writeU64(pd + i * 8, (g * 512 + i) * 0x20_0000 + 0x83);
  }
}

/** 64-bit long mode with identity paging (bzImage 64-bit entry, long-mode tests). */
export function setupLongMode(mem: GuestMemory, vcpu: KvmVcpuFd): void {
  writeGdt(mem);
  writeIdentityPageTables(mem);
  const s = vcpu.getSregs();
  applySegments(s, SEL_CODE64);
  s.cr3 = BigInt(PML4_START);
  s.cr4 |= CR4_PAE;
  s.cr0 |= CR0_PE | CR0_ET | CR0_PG;
  s.efer |= EFER_LME | EFER_LMA;
  vcpu.setSregs(s);
}

export const PAGE_TABLES_END = PDE_START + MAPPED_GIB * 0x1000;
