import type { GuestMemory } from '../../protocol/memory/index.js';
import type { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { emptyRegs } from '../kvm/structs.js';
import { BOOT_STACK_POINTER } from '../memory/layout.js';
import { setupLongMode, setupProtectedMode } from './cpu-mode.js';
import type { BootEntry } from './load.js';

/** Puts the boot vCPU at the kernel entry: CPU mode, GDT/page tables, and rip/rbx/rsi. */
export function applyBootEntry(mem: GuestMemory, vcpu: KvmVcpuFd, e: BootEntry): void {
  if (e.mode === 'protected32') setupProtectedMode(mem, vcpu);
  else setupLongMode(mem, vcpu);
  const r = emptyRegs();
  r.rip = BigInt(e.rip);
  r.rbx = BigInt(e.rbx);
  r.rsi = BigInt(e.rsi);
  r.rsp = BigInt(BOOT_STACK_POINTER);
  r.rbp = BigInt(BOOT_STACK_POINTER);
  r.rflags = 2n;
  vcpu.setRegs(r);
}
