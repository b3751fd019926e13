import { describe, it, expect } from 'vitest';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readInitramfs } from '../../vmm/boot/kernel-image.js';
import { GuestRam } from '../../vmm/memory/guest-ram.js';
import { physAddrBits } from '../../vmm/vm.js';
import { highMmioWindow } from '../../vmm/devices/platform-layout.js';
import { guestCpuid } from '../../vmm/boot/cpuid.js';
import type { CpuidEntry } from '../../vmm/kvm/cpuid-struct.js';
import { e820Map, ramRanges, E820_RAM, E820_RESERVED } from '../../vmm/memory/layout.js';
import { parseElf } from '../../vmm/boot/elf.js';
import { parseBzImage } from '../../vmm/boot/bzimage-header.js';
import { MemoryConfig } from '../../vmm/config/memory.js';
import { CpusConfig } from '../../vmm/config/cpus.js';
import { ConsoleConfig } from '../../vmm/config/console.js';
import { pvhElf, bzImage, x86 } from './fixtures/guests.js';

const e = (fn: number, index: number, r: Partial<CpuidEntry> = {}): CpuidEntry => ({ function: fn, index, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...r });

describe('guest CPUID', () => {
  it('sets APIC id, logical count, hypervisor bit and x2APIC topology per vCPU', () => {
    const sup = [e(0x1, 0, { ebx: 0x00ff0800 }), e(0xb, 0, { flags: 1 }), e(0xb, 1, { flags: 1 }), e(0xb, 2, { flags: 1 }), e(0x4, 0, { eax: 0x121 }), e(0x4, 3, { eax: 0x163 })];
    const c = guestCpuid(sup, 3, 4);
    const l1 = c.find((x) => x.function === 1)!;
    expect(l1.ebx >>> 24).toBe(3);
    expect((l1.ebx >> 16) & 0xff).toBe(4);
    expect(l1.ecx >>> 31).toBe(1);
    expect((l1.edx >> 28) & 1).toBe(1);
    const b0 = c.find((x) => x.function === 0xb && x.index === 0)!;
    const b1 = c.find((x) => x.function === 0xb && x.index === 1)!;
    expect([b0.eax, b0.ebx, b0.ecx >> 8, b0.edx]).toEqual([0, 1, 1, 3]);
    expect([b1.eax, b1.ebx, b1.ecx >> 8, b1.edx]).toEqual([2, 4, 2, 3]);
    const l3 = c.find((x) => x.function === 4 && x.index === 3)!;
    expect(l3.eax >>> 26).toBe(3);
    expect((l3.eax >> 14) & 0xfff).toBe(3);
  });

  it('drops XSAVE components whose CPUID feature is absent (AVX state without AVX)', () => {
    const sup = [e(0x1, 0, { ecx: 0 }), e(0x7, 0), e(0xd, 0, { eax: 7, ebx: 0x240, ecx: 0x340 }), e(0xd, 2, { eax: 0x100, ebx: 0x240 })];
    const c = guestCpuid(sup, 0, 1);
    const d0 = c.find((x) => x.function === 0xd && x.index === 0)!;
    expect(d0.eax).toBe(3);
    expect(d0.ecx).toBe(576);
    const withAvx = guestCpuid([e(0x1, 0, { ecx: 1 << 28 }), ...sup.slice(1)], 0, 1).find((x) => x.function === 0xd && x.index === 0)!;
    expect(withAvx.eax).toBe(7);
    expect(withAvx.ecx).toBe(0x340);
  });
});

describe('guest memory layout (Cloud Hypervisor x86_64)', () => {
  it('splits RAM around the 3 GiB hole and reserves the ECAM in the e820 map', () => {
    expect(ramRanges(512 << 20)).toEqual([{ guestAddr: 0, size: 512 << 20 }]);
    expect(ramRanges(4 * 2 ** 30)).toEqual([{ guestAddr: 0, size: 3 * 2 ** 30 }, { guestAddr: 4 * 2 ** 30, size: 2 ** 30 }]);
    const map = e820Map(4 * 2 ** 30);
    expect(map).toContainEqual({ addr: 0, size: 0xa0000, type: E820_RAM });
    expect(map).toContainEqual({ addr: 0x100000, size: 3 * 2 ** 30 - 0x100000, type: E820_RAM });
    expect(map).toContainEqual({ addr: 4 * 2 ** 30, size: 2 ** 30, type: E820_RAM });
    expect(map).toContainEqual({ addr: 0xe800_0000, size: 256 << 20, type: E820_RESERVED });
  });
});

describe('kernel image parsing', () => {
  it('finds the PVH entry note and PT_LOAD segments', () => {
    const img = parseElf(pvhElf([...x86.jmpSelf()], 0x200000));
    expect(img.pvhEntry).toBe(0x200000);
    expect(img.segments).toHaveLength(1);
    expect(img.segments[0]).toMatchObject({ paddr: 0x200000, filesz: 2, memsz: 2 + 0x1000 });
  });

  it('rejects hostile ELF headers with a clear error', () => {
    const elf = pvhElf([...x86.jmpSelf()]);
    const bad = Buffer.from(elf);
    bad.writeBigUInt64LE(0xffff_ffff_ffffn, 64 + 8); // segment offset far past the end
    expect(() => parseElf(bad)).toThrow(/offset out of range|past the end/);
    const big = Buffer.from(elf);
    big.writeUInt16LE(0xffff, 56); // phnum
    expect(() => parseElf(big)).toThrow(/truncated or malformed/);
    const ia32 = Buffer.from(elf);
    ia32[4] = 1;
    expect(() => parseElf(ia32)).toThrow(/64-bit/);
  });

  it('parses a bzImage setup header and refuses one without a 64-bit entry', () => {
    const bz = parseBzImage(bzImage([0xf4]));
    expect(bz.version).toBe(0x020f);
    expect(bz.setupSects).toBe(1);
    expect(bz.payload[0x200]).toBe(0xf4);
    expect(bz.cmdlineMax).toBe(2048);
    const old = bzImage([0xf4]);
    old.writeUInt16LE(0, 0x236);
    expect(() => parseBzImage(old)).toThrow(/XLF_KERNEL_64/);
  });
});

describe('VM config option strings', () => {
  it.skipIf(process.getuid?.() !== 0 || !existsSync('/sys/kernel/mm/hugepages/hugepages-2048kB'))(
    'counts huge pages another VM has reserved as taken: a second hugepages=on guest is refused up front, not by mmap ENOMEM', () => {
      const nr = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
      const before = readFileSync(nr, 'utf8').trim();
      writeFileSync(nr, String(Number(before) + 8));
      let first: GuestRam | null = null;
      try {
        first = GuestRam.create({ size: 8 << 20, hugepages: true, hugepageSize: 2 << 20 }); // reserves 4 pages
        expect(() => GuestRam.create({ size: 12 << 20, hugepages: true, hugepageSize: 2 << 20 })).toThrow(/need 6 of 2048 KiB, host has \d+ available \(\d+ free, \d+ of them reserved/);
      } finally {
        first?.close();
        writeFileSync(nr, before);
      }
    });

  it('places the 64-bit PCI window below the guest\'s physical address width, so guests above 508 GiB fit on hosts with the bits', () => {
    const GiB = 2 ** 30;
    const bits = physAddrBits([e(0x8000_0008, 0, { eax: 0x302e })]); // 46 physical, 48 virtual
    expect(bits).toBe(46);
    expect(physAddrBits([])).toBe(39);
    expect(highMmioWindow(600 * GiB, bits)).toEqual({ base: 604 * GiB, size: 64 * GiB });
    expect(() => highMmioWindow(600 * GiB, 39)).toThrow(/no room for the 64-bit PCI window below 2\^39/);
  });

  it('reads an initramfs above 2 GiB (readFileSync stops there)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-initrd-'));
    try {
      const path = join(dir, 'big.cpio');
      const size = 2 ** 31 + 4096;
      const fd = openSync(path, 'w');
      ftruncateSync(fd, size); // sparse
      writeSync(fd, Buffer.from('TRAILER!!!'), 0, 10, size - 10);
      closeSync(fd);
      const b = readInitramfs(path);
      expect(b.length).toBe(size);
      expect(b.subarray(size - 10).toString()).toBe('TRAILER!!!');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('--memory round-trips through JSON and rejects conflicts', () => {
    const m = MemoryConfig.parse('size=1G,shared=on');
    expect(m.toJSON()).toEqual({ size: 2 ** 30, shared: true, hugepages: false, hugepage_size: null });
    expect(MemoryConfig.fromJSON(m.toJSON())).toEqual(m);
    expect(() => MemoryConfig.parse('size=1G,hugepages=on,hugepage_size=4M')).toThrow(/not supported/);
    expect(() => MemoryConfig.parse('size=65M,hugepages=on')).toThrow(/multiple of hugepage_size/);
    expect(() => MemoryConfig.parse('size=1G,size=2G')).toThrow(/given twice/);
  });

  it('--cpus and --serial/--console', () => {
    expect(CpusConfig.parse('boot=2').toJSON()).toEqual({ boot_vcpus: 2, max_vcpus: 2 });
    expect(() => CpusConfig.parse('boot=0')).toThrow(/boot/);
    expect(ConsoleConfig.parse('file=/tmp/x').toJSON()).toEqual({ mode: 'File', file: '/tmp/x' });
    expect(ConsoleConfig.parse('off').mode).toBe('Off');
    expect(() => ConsoleConfig.parse('socket=/x')).toThrow(/not supported/);
    expect(() => ConsoleConfig.parse('foo')).toThrow(/invalid value/);
  });
});
