// Guest CPUID: KVM's supported set, with topology leaves rewritten per vCPU (one thread per core,
// one socket) and the hypervisor bit set.
import type { CpuidEntry } from '../kvm/cpuid-struct.js';

const ECX_TSC_DEADLINE = 1 << 24;
const ECX_HYPERVISOR = 1 << 31;
const EDX_HTT = 1 << 28;
const LEVEL_SMT = 1;
const LEVEL_CORE = 2;

function log2Ceil(n: number): number {
  return n <= 1 ? 0 : Math.ceil(Math.log2(n));
}

// XSAVE state components and the CPUID feature bit each needs: [component, leaf, register, bit].
const XFEATURE_DEPS: [number, number, 'ebx' | 'ecx', number][] = [
  [2, 0x1, 'ecx', 28], // AVX (YMM) ← CPUID.1:ECX.AVX
  [3, 0x7, 'ebx', 14], // MPX BNDREGS ← CPUID.7:EBX.MPX
  [4, 0x7, 'ebx', 14], // MPX BNDCSR
  [5, 0x7, 'ebx', 16], // AVX-512 opmask ← CPUID.7:EBX.AVX512F
  [6, 0x7, 'ebx', 16], // AVX-512 ZMM_Hi256
  [7, 0x7, 'ebx', 16], // AVX-512 Hi16_ZMM
  [9, 0x7, 'ecx', 3], // PKRU ← CPUID.7:ECX.PKU
];
const LEGACY_XSAVE_SIZE = 576;

/**
 * Leaf 0xD must not offer XSAVE components whose instructions CPUID says are absent (seen when KVM
 * runs on an emulated CPU, e.g. QEMU TCG: XCR0 allows AVX while CPUID.1 lacks it — Linux then WARNs
 * "XSAVE consistency problem"). Drops such components and recomputes the maximum save area size.
 */
function sanitizeXsave(entries: CpuidEntry[]): void {
  const find = (fn: number, idx = 0) => entries.find((e) => e.function === fn && e.index === idx);
  const root = find(0xd, 0);
  if (!root) return;
  for (const [comp, leaf, reg, bit] of XFEATURE_DEPS) {
    const f = find(leaf);
    if (!(root.eax & (1 << comp)) || (f && f[reg] & (1 << bit))) continue;
    root.eax &= ~(1 << comp);
    const sub = find(0xd, comp);
    if (sub) sub.eax = sub.ebx = sub.ecx = sub.edx = 0;
  }
  let max = LEGACY_XSAVE_SIZE;
  for (let comp = 2; comp < 32; comp++) {
    if (!(root.eax & (1 << comp))) continue;
    const sub = find(0xd, comp);
    if (sub) max = Math.max(max, sub.ebx + sub.eax);
  }
  root.ecx = max;
  root.ebx = Math.min(root.ebx, max);
}

export function guestCpuid(supported: readonly CpuidEntry[], apicId: number, cpus: number): CpuidEntry[] {
  const out = topology(supported, apicId, cpus);
  sanitizeXsave(out);
  return out;
}

function topology(supported: readonly CpuidEntry[], apicId: number, cpus: number): CpuidEntry[] {
  const coreShift = log2Ceil(cpus);
  return supported.map((src) => {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        e.ebx = ((e.ebx & 0x0000ffff) | ((cpus & 0xff) << 16) | ((apicId & 0xff) << 24)) >>> 0;
        e.ecx = (e.ecx | ECX_HYPERVISOR | ECX_TSC_DEADLINE) >>> 0;
        e.edx = (cpus > 1 ? e.edx | EDX_HTT : e.edx & ~EDX_HTT) >>> 0;
        break;
      case 0x4: {
        // eax[31:26] cores per package - 1; eax[25:14] threads sharing this cache - 1
        const level = (e.eax >> 5) & 0x7;
        const sharing = level >= 3 ? cpus - 1 : 0;
        e.eax = ((e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cpus - 1) & 0x3f) << 26)) >>> 0;
        break;
      }
      case 0xb:
      case 0x1f:
        if (e.index === 0) {
          e.eax = 0;
          e.ebx = 1;
          e.ecx = (LEVEL_SMT << 8) | 0;
        } else if (e.index === 1) {
          e.eax = coreShift;
          e.ebx = cpus;
          e.ecx = (LEVEL_CORE << 8) | 1;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index & 0xff;
        }
        e.edx = apicId >>> 0;
        break;
      default:
        break;
    }
    return e;
  });
}
