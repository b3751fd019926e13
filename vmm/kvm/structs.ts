// Encoders/decoders for the KVM register structs (layouts from linux/kvm.h, x86_64).

export const REGS_SIZE = 144;
export const SREGS_SIZE = 312;
export const FPU_SIZE = 416;
export const LAPIC_SIZE = 1024;

const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
/** struct kvm_regs: 18 u64 in this order. */
export type Regs = Record<RegName, bigint>;

export function emptyRegs(): Regs {
  const r = {} as Regs;
  for (const n of REG_NAMES) r[n] = 0n;
  r.rflags = 2n; // bit 1 is reserved-as-one
  return r;
}

export function encodeRegs(r: Regs): Buffer {
  const b = Buffer.alloc(REGS_SIZE);
  REG_NAMES.forEach((n, i) => b.writeBigUInt64LE(BigInt.asUintN(64, r[n]), i * 8));
  return b;
}

export function decodeRegs(b: Buffer): Regs {
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => (r[n] = b.readBigUInt64LE(i * 8)));
  return r;
}

/** struct kvm_segment (24 bytes). */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** struct kvm_dtable (16 bytes). */
export interface DTable {
  base: bigint;
  limit: number;
}

const SEG_FIELDS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
type SegName = (typeof SEG_FIELDS)[number];

export type Sregs = Record<SegName, Segment> & {
  gdt: DTable;
  idt: DTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
  /** Raw pending-interrupt bitmap (4 u64); kept as bytes so a get/set round trip preserves it. */
  interruptBitmap: Buffer;
};

function readSeg(b: Buffer, o: number): Segment {
  return {
    base: b.readBigUInt64LE(o),
    limit: b.readUInt32LE(o + 8),
    selector: b.readUInt16LE(o + 12),
    type: b[o + 14],
    present: b[o + 15],
    dpl: b[o + 16],
    db: b[o + 17],
    s: b[o + 18],
    l: b[o + 19],
    g: b[o + 20],
    avl: b[o + 21],
    unusable: b[o + 22],
  };
}

function writeSeg(b: Buffer, o: number, s: Segment): void {
  b.writeBigUInt64LE(BigInt.asUintN(64, s.base), o);
  b.writeUInt32LE(s.limit >>> 0, o + 8);
  b.writeUInt16LE(s.selector & 0xffff, o + 12);
  b[o + 14] = s.type;
  b[o + 15] = s.present;
  b[o + 16] = s.dpl;
  b[o + 17] = s.db;
  b[o + 18] = s.s;
  b[o + 19] = s.l;
  b[o + 20] = s.g;
  b[o + 21] = s.avl;
  b[o + 22] = s.unusable;
}

export function decodeSregs(b: Buffer): Sregs {
  const s = {} as Sregs;
  SEG_FIELDS.forEach((n, i) => (s[n] = readSeg(b, i * 24)));
  s.gdt = { base: b.readBigUInt64LE(192), limit: b.readUInt16LE(200) };
  s.idt = { base: b.readBigUInt64LE(208), limit: b.readUInt16LE(216) };
  s.cr0 = b.readBigUInt64LE(224);
  s.cr2 = b.readBigUInt64LE(232);
  s.cr3 = b.readBigUInt64LE(240);
  s.cr4 = b.readBigUInt64LE(248);
  s.cr8 = b.readBigUInt64LE(256);
  s.efer = b.readBigUInt64LE(264);
  s.apicBase = b.readBigUInt64LE(272);
  s.interruptBitmap = Buffer.from(b.subarray(280, 312));
  return s;
}

export function encodeSregs(s: Sregs): Buffer {
  const b = Buffer.alloc(SREGS_SIZE);
  SEG_FIELDS.forEach((n, i) => writeSeg(b, i * 24, s[n]));
  b.writeBigUInt64LE(s.gdt.base, 192);
  b.writeUInt16LE(s.gdt.limit, 200);
  b.writeBigUInt64LE(s.idt.base, 208);
  b.writeUInt16LE(s.idt.limit, 216);
  b.writeBigUInt64LE(s.cr0, 224);
  b.writeBigUInt64LE(s.cr2, 232);
  b.writeBigUInt64LE(s.cr3, 240);
  b.writeBigUInt64LE(s.cr4, 248);
  b.writeBigUInt64LE(s.cr8, 256);
  b.writeBigUInt64LE(s.efer, 264);
  b.writeBigUInt64LE(s.apicBase, 272);
  s.interruptBitmap.copy(b, 280, 0, 32);
  return b;
}

/** Flat segment from a GDT-style descriptor value (base/limit/access/flags unpacked). */
export function segmentFromDescriptor(desc: bigint, selector: number): Segment {
  const d = BigInt.asUintN(64, desc);
  const base = ((d >> 16n) & 0xffffffn) | (((d >> 56n) & 0xffn) << 24n);
  let limit = Number((d & 0xffffn) | (((d >> 48n) & 0xfn) << 16n));
  const access = Number((d >> 40n) & 0xffn);
  const flags = Number((d >> 52n) & 0xfn);
  const g = (flags >> 3) & 1;
  if (g) limit = ((limit << 12) | 0xfff) >>> 0;
  return {
    base,
    limit,
    selector,
    type: access & 0xf,
    present: (access >> 7) & 1,
    dpl: (access >> 5) & 3,
    db: (flags >> 2) & 1,
    s: (access >> 4) & 1,
    l: (flags >> 1) & 1,
    g,
    avl: flags & 1,
    unusable: (access >> 7) & 1 ? 0 : 1,
  };
}

/** Build a GDT descriptor from flags (4 bits), base and limit (20 bits), like the kernel's GDT_ENTRY. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit & 0xfffff);
  const f = BigInt(flags & 0xf0ff);
  return (
    ((b & 0xff000000n) << 32n) |
    ((f & 0xf0ffn) << 40n) |
    ((l & 0xf0000n) << 32n) |
    ((b & 0x00ffffffn) << 16n) |
    (l & 0xffffn)
  );
}

export function formatRegs(r: Regs, s?: Sregs): string {
  const hex = (v: bigint) => '0x' + v.toString(16).padStart(16, '0');
  const lines: string[] = [];
  for (let i = 0; i < REG_NAMES.length; i += 3) {
    lines.push(REG_NAMES.slice(i, i + 3).map((n) => `${n.padStart(6)}=${hex(r[n])}`).join(' '));
  }
  if (s) {
    lines.push(`   cr0=${hex(s.cr0)}    cr3=${hex(s.cr3)}    cr4=${hex(s.cr4)}`);
    lines.push(`  efer=${hex(s.efer)}    cs=${s.cs.selector.toString(16)} base=${hex(s.cs.base)} l=${s.cs.l} db=${s.cs.db}`);
    lines.push(`   gdt=${hex(s.gdt.base)}/${s.gdt.limit.toString(16)}  idt=${hex(s.idt.base)}/${s.idt.limit.toString(16)}`);
  }
  return lines.join('\n');
}
