// struct kvm_cpuid2 { u32 nent; u32 pad; struct kvm_cpuid_entry2 entries[]; } (entry: 40 bytes)
export const CPUID_ENTRY_SIZE = 40;
/** kvm_cpuid_entry2.flags: the leaf has sub-leaves selected by ECX. */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export function decodeCpuid(buf: Buffer): CpuidEntry[] {
  const n = buf.readUInt32LE(0);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    out.push({
      function: buf.readUInt32LE(o),
      index: buf.readUInt32LE(o + 4),
      flags: buf.readUInt32LE(o + 8),
      eax: buf.readUInt32LE(o + 12),
      ebx: buf.readUInt32LE(o + 16),
      ecx: buf.readUInt32LE(o + 20),
      edx: buf.readUInt32LE(o + 24),
    });
  }
  return out;
}

export function encodeCpuid(entries: readonly CpuidEntry[]): Buffer {
  const buf = Buffer.alloc(8 + entries.length * CPUID_ENTRY_SIZE);
  buf.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    buf.writeUInt32LE(e.function >>> 0, o);
    buf.writeUInt32LE(e.index >>> 0, o + 4);
    buf.writeUInt32LE(e.flags >>> 0, o + 8);
    buf.writeUInt32LE(e.eax >>> 0, o + 12);
    buf.writeUInt32LE(e.ebx >>> 0, o + 16);
    buf.writeUInt32LE(e.ecx >>> 0, o + 20);
    buf.writeUInt32LE(e.edx >>> 0, o + 24);
  });
  return buf;
}
