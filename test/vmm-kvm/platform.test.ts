import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../../vmm/kvm/machine.js';
import { runPlatform } from '../../vmm/vm.js';
import { openFile, closeQuiet, O_WRONLY, O_CREAT, O_TRUNC, O_CLOEXEC } from '../../protocol/sys/fd.js';
import type { Platform } from '../../vmm/devices/platform.js';
import { x86 } from './fixtures/guests.js';
import { hasKvm, setMode } from './helpers.js';
import { HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE } from '../../vmm/pci/root.js';

const RESULT = 0x3000; // guests store what they read here; the test reads it back

async function runGuest(
  mode: 'protected' | 'long',
  code: (p: Platform, m: Machine) => number[],
  setup?: (m: Machine) => void,
): Promise<{ m: Machine; serial: string; outcome: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'kumo-kvm-'));
  const file = join(dir, 'serial.out');
  const fd = openFile(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600);
  const m = Machine.create({ memory: { size: 64 << 20 }, vcpus: 1 });
  try {
    const res = await runPlatform(m, {
      serialFd: fd,
      consoleFd: -1,
      console: true,
      rngSrc: '/dev/urandom',
      prepare: (p) => {
        setMode(m, 0, mode, 0x100000);
        setup?.(m);
        m.ram.memory.write(0x100000, Uint8Array.from(code(p, m)));
      },
    });
    return { m, serial: readFileSync(file, 'latin1'), outcome: res.outcome.kind };
  } catch (e) {
    m.close();
    throw e;
  } finally {
    closeQuiet(fd);
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(!hasKvm)('kumo platform on /dev/kvm (real device model in the vCPU workers)', () => {
  it('serial output from a protected-mode guest, then ACPI S5 through 0x600 powers off', async () => {
    const { m, serial, outcome } = await runGuest('protected', () => [...x86.print('hello 16550\n', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf()]);
    m.close();
    expect(serial).toBe('hello 16550\n');
    expect(outcome).toBe('poweroff');
  });

  it('i8042 0xFE resets', async () => {
    const { m, outcome } = await runGuest('protected', () => [...x86.resetI8042(), ...x86.jmpSelf()]);
    m.close();
    expect(outcome).toBe('reset');
  });

  it('PCI config space through 0xCF8/0xCFC and through ECAM at 0xE800_0000', async () => {
    const { m, outcome } = await runGuest('protected', () => [
      // 0xCF8: 00:00.0 reg 0, then 00:01.0 reg 0
      ...x86.movDx(0xcf8), ...x86.movEax(0x8000_0000), ...x86.outDxEax(), ...x86.movDx(0xcfc), ...x86.inEaxDx(), ...x86.storeEaxAbs32(RESULT),
      ...x86.movDx(0xcf8), ...x86.movEax(0x8000_0800), ...x86.outDxEax(), ...x86.movDx(0xcfc), ...x86.inEaxDx(), ...x86.storeEaxAbs32(RESULT + 4),
      // ECAM: bus 0 dev 0 and dev 1 (dev << 15)
      ...x86.movEbx(0xe800_0000), ...x86.loadEaxFromEbx(), ...x86.storeEaxAbs32(RESULT + 8),
      ...x86.movEbx(0xe800_8000), ...x86.loadEaxFromEbx(), ...x86.storeEaxAbs32(RESULT + 12),
      // an empty slot reads all ones
      ...x86.movEbx(0xe80f_8000), ...x86.loadEaxFromEbx(), ...x86.storeEaxAbs32(RESULT + 16),
      ...x86.poweroffS5(), ...x86.jmpSelf(),
    ]);
    try {
      const mem = m.ram.memory;
      expect(outcome).toBe('poweroff');
      const bridge = (HOST_BRIDGE_VENDOR | (HOST_BRIDGE_DEVICE << 16)) >>> 0;
      const rng = (0x1af4 | (0x1044 << 16)) >>> 0; // virtio-rng: vendor 0x1af4, device 0x1040 + 4
      expect(mem.readU32(RESULT)).toBe(bridge);
      expect(mem.readU32(RESULT + 4)).toBe(rng);
      expect(mem.readU32(RESULT + 8)).toBe(bridge);
      expect(mem.readU32(RESULT + 12)).toBe(rng);
      expect(mem.readU32(RESULT + 16)).toBe(0xffff_ffff);
    } finally {
      m.close();
    }
  });

  it('virtio-pci BAR0 (above 4 GiB) common config reads from a long-mode guest', async () => {
    let bar = 0;
    const { m, outcome } = await runGuest(
      'long',
      (p) => {
        bar = p.virtio[0].barAddress();
        const le64 = (v: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return [...b]; };
        return [
          0x48, 0xbb, ...le64(bar), // mov rbx, bar
          0x0f, 0xb7, 0x43, 0x12, // movzx eax, word [rbx+0x12]  (num_queues)
          0x89, 0x04, 0x25, ...le64(RESULT).slice(0, 4), // mov [RESULT], eax
          ...x86.movEax(1), ...x86.storeEaxAtEbx(), // device_feature_select = 1
          0x8b, 0x43, 0x04, // mov eax, [rbx+4]  (device_feature bits 32..63)
          0x89, 0x04, 0x25, ...le64(RESULT + 4).slice(0, 4),
          ...x86.poweroffS5(), ...x86.jmpSelf(),
        ];
      },
      (m) => {
        // map the 5th GiB (where the 64-bit PCI window starts) with one more page directory at 0x10000
        const mem = m.ram.memory;
        mem.writeU64(0xa000 + 4 * 8, 0x10000 | 3);
        for (let i = 0; i < 512; i++) mem.writeU64(0x10000 + i * 8, 4 * 2 ** 30 + i * 0x20_0000 + 0x83);
      },
    );
    try {
      expect(bar).toBeGreaterThanOrEqual(4 * 2 ** 30);
      expect(bar).toBeLessThan(5 * 2 ** 30);
      expect(outcome).toBe('poweroff');
      expect(m.ram.memory.readU32(RESULT)).toBe(1); // virtio-rng: one queue
      expect(m.ram.memory.readU32(RESULT + 4) & 1).toBe(1); // VIRTIO_F_VERSION_1 (feature bit 32)
    } finally {
      m.close();
    }
  });
});
