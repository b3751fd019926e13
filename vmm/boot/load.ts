// Loads a kernel (PVH ELF or bzImage), initramfs and command line into guest RAM and returns the
// entry state for the boot vCPU. Placement follows Cloud Hypervisor's x86_64 layout.
import type { GuestMemory } from '../../protocol/memory/index.js';
import {
  CMDLINE_MAX_SIZE, CMDLINE_START, E820_RAM, HIGH_RAM_START, MEMMAP_START, MODLIST_START, PVH_INFO_START,
  ZERO_PAGE_START, e820Map, ramRanges, type E820Entry,
  RESET_VECTOR,
} from '../memory/layout.js';
import { BootError } from './errors.js';
import { HDR } from './bzimage-header.js';
import type { KernelImage } from './kernel-image.js';

const PAGE = 4096;
const PVH_MAGIC = 0x336ec578;
const BZ_LOAD_ADDR = HIGH_RAM_START;

export interface BootEntry {
  mode: 'protected32' | 'long64';
  rip: number;
  /** PVH: rbx = hvm_start_info; bzImage: rsi = boot_params. */
  rbx: number;
  rsi: number;
  kernelEnd: number;
  initramfs: { addr: number; size: number } | null;
}

export interface LoadOptions {
  kernel: KernelImage;
  initramfs: Buffer | null;
  cmdline: string;
  memSize: number;
  /** Guest address of the ACPI RSDP, when ACPI tables were written. */
  rsdp: number | null;
}

/** A size as a person reads it: exact units when it is round, else MiB with one decimal. */
function sizeText(n: number): string {
  for (const [unit, bytes] of [['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) if (n > 0 && n % bytes === 0) return `${n / bytes}${unit}`;
  return `${(n / 2 ** 20).toFixed(1)}M`;
}

/** Checks everything that can be checked without guest RAM (sizes, cmdline) so the CLI fails early. */
export function checkBootFits(o: Omit<LoadOptions, 'rsdp'>): void {
  const low = ramRanges(o.memSize)[0].size;
  const cmdBytes = Buffer.byteLength(o.cmdline) + 1;
  const cmdMax = o.kernel.kind === 'bzimage' ? Math.min(o.kernel.bz.cmdlineMax + 1, CMDLINE_MAX_SIZE) : CMDLINE_MAX_SIZE;
  if (cmdBytes > cmdMax) {
    throw new BootError(`the kernel command line is ${cmdBytes - 1} bytes; this kernel takes at most ${cmdMax - 1}`, { bytes: cmdBytes - 1, max: cmdMax - 1 });
  }
  const kEnd = kernelEnd(o.kernel);
  if (kEnd > low) {
    const where = low < o.memSize ? `the ${sizeText(low)} of guest RAM below the 32-bit hole` : `--memory size=${sizeText(o.memSize)}`;
    throw new BootError(`the kernel needs guest RAM up to ${sizeText(kEnd)}, more than ${where}`, { kernelEnd: kEnd, lowRam: low });
  }
  if (o.initramfs) initramfsAddr(o.initramfs.length, low, kEnd, o.kernel);
}

function kernelEnd(k: KernelImage): number {
  if (k.kind === 'pvh') {
    let end = 0;
    for (const s of k.elf.segments) {
      if (s.paddr < HIGH_RAM_START) throw new BootError('ELF segment below 1 MiB', { paddr: s.paddr });
      end = Math.max(end, s.paddr + s.memsz);
    }
    return end;
  }
  // The decompressor needs init_size bytes from its (2 MiB-aligned, >= 16 MiB) run address.
  return Math.max(BZ_LOAD_ADDR + k.bz.payload.length, 16 * 1024 * 1024 + k.bz.initSize);
}

/** Top of low RAM, page aligned (as Cloud Hypervisor), above the kernel. */
function initramfsAddr(size: number, lowRam: number, kEnd: number, k: KernelImage): number {
  let top = lowRam;
  if (k.kind === 'bzimage') top = Math.min(top, k.bz.initrdAddrMax + 1);
  const addr = Math.floor((top - size) / PAGE) * PAGE;
  if (size > top || addr < kEnd) {
    throw new BootError(`the initramfs (${sizeText(size)}) does not fit between the kernel's end (${sizeText(kEnd)}) and ${sizeText(top)}`, { size, kernelEnd: kEnd, ramTop: top });
  }
  return addr;
}

/**
 * There is no firmware: at the reset vector a stub asks the i8042 for a reset (mov al, 0xfe; out 0x64, al; then hlt).
 * Linux's default reboot on a hardware-reduced ACPI machine ends in a real-mode jump there (BOOT_EFI without EFI falls
 * to BOOT_BIOS), which ran zeroes for good. The bytes mean the same in real, protected and long mode.
 */
const RESET_STUB = Uint8Array.of(0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd);

export function loadKernel(mem: GuestMemory, o: LoadOptions): BootEntry {
  checkBootFits(o);
  const low = ramRanges(o.memSize)[0].size;
  const kEnd = kernelEnd(o.kernel);
  let initrd: BootEntry['initramfs'] = null;
  if (o.initramfs) {
    const addr = initramfsAddr(o.initramfs.length, low, kEnd, o.kernel);
    mem.write(addr, o.initramfs);
    initrd = { addr, size: o.initramfs.length };
  }
  const cmd = Buffer.concat([Buffer.from(o.cmdline), Buffer.from([0])]);
  mem.write(CMDLINE_START, cmd);
  // BIOS data area: EBDA segment pointer, for guests that scan for the RSDP there.
  mem.writeU16(0x40e, 0xa000);
  mem.write(RESET_VECTOR, RESET_STUB);
  const map = e820Map(o.memSize);
  return o.kernel.kind === 'pvh' ? loadPvh(mem, o, map, initrd, kEnd) : loadBz(mem, o, map, initrd, kEnd);
}

function loadPvh(mem: GuestMemory, o: LoadOptions, map: E820Entry[], initrd: BootEntry['initramfs'], kEnd: number): BootEntry {
  if (o.kernel.kind !== 'pvh') throw new BootError('internal: not a PVH kernel');
  const { elf, bytes } = o.kernel;
  for (const s of elf.segments) {
    mem.write(s.paddr, bytes.subarray(s.offset, s.offset + s.filesz));
    if (s.memsz > s.filesz) mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0);
  }
  // hvm_start_info (version 1: with memmap)
  const si = Buffer.alloc(56);
  si.writeUInt32LE(PVH_MAGIC, 0);
  si.writeUInt32LE(1, 4);
  si.writeUInt32LE(initrd ? 1 : 0, 12);
  si.writeBigUInt64LE(initrd ? BigInt(MODLIST_START) : 0n, 16);
  si.writeBigUInt64LE(BigInt(CMDLINE_START), 24);
  si.writeBigUInt64LE(BigInt(o.rsdp ?? 0), 32);
  si.writeBigUInt64LE(BigInt(MEMMAP_START), 40);
  si.writeUInt32LE(map.length, 48);
  mem.write(PVH_INFO_START, si);
  if (initrd) {
    const mod = Buffer.alloc(32);
    mod.writeBigUInt64LE(BigInt(initrd.addr), 0);
    mod.writeBigUInt64LE(BigInt(initrd.size), 8);
    mem.write(MODLIST_START, mod);
  }
  const mm = Buffer.alloc(map.length * 24);
  map.forEach((e, i) => {
    mm.writeBigUInt64LE(BigInt(e.addr), i * 24);
    mm.writeBigUInt64LE(BigInt(e.size), i * 24 + 8);
    mm.writeUInt32LE(e.type, i * 24 + 16);
  });
  mem.write(MEMMAP_START, mm);
  return { mode: 'protected32', rip: elf.pvhEntry!, rbx: PVH_INFO_START, rsi: 0, kernelEnd: kEnd, initramfs: initrd };
}

function loadBz(mem: GuestMemory, o: LoadOptions, map: E820Entry[], initrd: BootEntry['initramfs'], kEnd: number): BootEntry {
  if (o.kernel.kind !== 'bzimage') throw new BootError('internal: not a bzImage');
  const bz = o.kernel.bz;
  mem.write(BZ_LOAD_ADDR, bz.payload);
  const zp = Buffer.alloc(PAGE);
  bz.setupHeader.copy(zp, HDR.setupSects);
  zp[HDR.typeOfLoader] = 0xff;
  zp.writeUInt32LE(CMDLINE_START, HDR.cmdLinePtr);
  zp.writeUInt32LE(0, 0xc8); // ext_cmd_line_ptr
  if (initrd) {
    zp.writeUInt32LE(initrd.addr >>> 0, HDR.ramdiskImage);
    zp.writeUInt32LE(initrd.size >>> 0, HDR.ramdiskSize);
    zp.writeUInt32LE(Math.floor(initrd.addr / 2 ** 32), 0xc0);
    zp.writeUInt32LE(Math.floor(initrd.size / 2 ** 32), 0xc4);
  }
  if (o.rsdp !== null) zp.writeBigUInt64LE(BigInt(o.rsdp), 0x70); // acpi_rsdp_addr
  const entries = map.slice(0, 128);
  zp[0x1e8] = entries.length;
  entries.forEach((e, i) => {
    const off = 0x2d0 + i * 20;
    zp.writeBigUInt64LE(BigInt(e.addr), off);
    zp.writeBigUInt64LE(BigInt(e.size), off + 8);
    zp.writeUInt32LE(e.type === E820_RAM ? 1 : e.type, off + 16);
  });
  mem.write(ZERO_PAGE_START, zp);
  return { mode: 'long64', rip: BZ_LOAD_ADDR + 0x200, rbx: 0, rsi: ZERO_PAGE_START, kernelEnd: kEnd, initramfs: initrd };
}
