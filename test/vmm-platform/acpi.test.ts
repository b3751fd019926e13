import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildAcpiTables } from '../../vmm/acpi/index.js';
import * as aml from '../../vmm/acpi/aml.js';
import { checksum } from '../../vmm/acpi/tables.js';

function haveIasl(): string | null {
  const probe = () => spawnSync('iasl', ['-v'], { encoding: 'utf8' }).status !== null;
  if (probe()) return null;
  const apt = spawnSync('apt-get', ['install', '-y', 'acpica-tools'], { encoding: 'utf8' });
  return probe() ? null : `iasl missing and apt-get install acpica-tools failed: ${apt.stderr?.slice(-200)}`;
}

const missing = haveIasl();
if (missing) console.warn(`skipping iasl checks: ${missing}`);

const VCPUS = 3;
const tables = buildAcpiTables({ vcpus: VCPUS, pciMmio64: { base: 2 ** 33, size: 2 ** 36 } });
const dir = mkdtempSync(join(tmpdir(), 'kumo-acpi-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function disassemble(name: string): string {
  const blob = tables.blobs.find((b) => b.name === name);
  if (!blob) throw new Error(`no ${name}`);
  const file = join(dir, `${name}.dat`);
  writeFileSync(file, blob.bytes);
  const r = spawnSync('iasl', ['-d', file], { encoding: 'utf8' });
  const out = `${r.stdout}\n${r.stderr}`;
  expect(r.status, out).toBe(0);
  expect(out).not.toMatch(/error|warning|invalid|incorrect/i);
  const dsl = readFileSync(join(dir, `${name}.dsl`), 'utf8');
  expect(dsl).not.toMatch(/\*\*\*\*|Invalid|Unknown|Incorrect/);
  return dsl;
}

describe('AML encoder', () => {
  it('encodes PkgLength in 1-4 bytes counting itself', () => {
    expect([...aml.pkgLength(0x3e)]).toEqual([0x3f]);
    expect([...aml.pkgLength(0x3f)]).toEqual([0x41, 0x04]); // 0x41 total
    expect([...aml.pkgLength(0x1000)]).toEqual([0x83, 0x00, 0x01]); // 0x1003 total
  });
  it('encodes integers, names and EISA ids', () => {
    expect([...aml.integer(0)]).toEqual([0]);
    expect([...aml.integer(0x1234)]).toEqual([0x0b, 0x34, 0x12]);
    expect([...aml.integer(2 ** 40)]).toEqual([0x0e, 0, 0, 0, 0, 0, 1, 0, 0]);
    expect([...aml.nameString('\\_SB_.PCI0')]).toEqual([0x5c, 0x2e, ...Buffer.from('_SB_PCI0')]);
    expect([...aml.eisaId('PNP0A08')]).toEqual([0x0c, 0x41, 0xd0, 0x0a, 0x08]);
  });
});

describe('ACPI tables', () => {
  it('lays out the RSDP at 0xA0000 with valid checksums and an XSDT pointer', () => {
    expect(tables.rsdpAddr).toBe(0xa0000);
    const rsdp = tables.blobs[0];
    expect(rsdp.name).toBe('RSDP');
    expect(Buffer.from(rsdp.bytes.subarray(0, 8)).toString()).toBe('RSD PTR ');
    expect(checksum(rsdp.bytes, 0, 20)).toBe(0);
    expect(checksum(rsdp.bytes)).toBe(0);
    expect(rsdp.bytes[15]).toBe(2);
    const xsdtAddr = Number(Buffer.from(rsdp.bytes).readBigUInt64LE(24));
    expect(tables.blobs.find((b) => b.name === 'XSDT')?.addr).toBe(xsdtAddr);
    for (const b of tables.blobs.slice(1)) expect(checksum(b.bytes), b.name).toBe(0);
    // no overlaps
    const sorted = [...tables.blobs].sort((x, y) => x.addr - y.addr);
    for (let i = 1; i < sorted.length; i++) expect(sorted[i].addr).toBeGreaterThanOrEqual(sorted[i - 1].addr + sorted[i - 1].bytes.length);
  });

  it.skipIf(missing)('DSDT disassembles and recompiles cleanly with the expected devices', () => {
    const dsl = disassemble('DSDT');
    expect(dsl).toContain('EisaId ("PNP0A08")');
    expect(dsl).toContain('EisaId ("PNP0A03")');
    expect(dsl).toContain('EisaId ("PNP0501")');
    expect(dsl).toMatch(/IO \(Decode16,\s+0x03F8,\s+\/\/ Range Minimum\s+0x03F8,/);
    expect(dsl).toMatch(/Device \(COM1\)[\s\S]*?Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive[^)]*\)\s*\{\s*0x00000004,/);
    expect(dsl).toMatch(/0xC0000000,\s+\/\/ Range Minimum\s+0xE7FFFFFF,/);
    expect(dsl).toContain('"ACPI0013"');
    expect(dsl).toContain('Notify (\\_SB.PWRB, 0x80)');
    expect(dsl).toMatch(/Name \(_S5, Package \(0x02\)[^\n]*\s*\{\s*0x05,/);
    const r = spawnSync('iasl', ['-p', join(dir, 'recompiled'), join(dir, 'DSDT.dsl')], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toMatch(/0 Errors, 0 Warnings/);
  });

  it.skipIf(missing)('FADT is revision 6, hardware-reduced, reset via the 0x600 port', () => {
    const dsl = disassemble('FACP');
    expect(dsl).toMatch(/Revision : 06/);
    expect(dsl).toMatch(/Hardware Reduced \(V5\) : 1/);
    expect(dsl).toMatch(/Reset Register Supported \(V2\) : 1/);
    expect(dsl).toMatch(/Reset Register : \[Generic Address Structure\][\s\S]*?Space ID : 01[\s\S]*?Address : 0000000000000600/);
    expect(dsl).toMatch(/Sleep Control Register : \[Generic Address Structure\][\s\S]*?Address : 0000000000000600/);
    const dsdt = tables.blobs.find((b) => b.name === 'DSDT');
    expect(dsl).toMatch(new RegExp(`DSDT Address : 0+${dsdt?.addr.toString(16).toUpperCase()}`));
  });

  it.skipIf(missing)('MADT has one local APIC per vCPU and the IOAPIC', () => {
    const dsl = disassemble('APIC');
    expect(dsl.match(/Subtable Type : 00 \[Processor Local APIC\]/g)?.length).toBe(VCPUS);
    expect(dsl).toMatch(/Local Apic Address : FEE00000/);
    expect(dsl).toMatch(/Address : FEC00000/);
    expect(dsl).toMatch(/Interrupt : 00000000/);
  });

  it.skipIf(missing)('MCFG and XSDT', () => {
    expect(disassemble('MCFG')).toMatch(/Base Address : 00000000E8000000[\s\S]*End Bus Number : 00/);
    const x = disassemble('XSDT');
    expect(x.match(/ACPI Table Address/g)?.length).toBe(3);
  });
});

