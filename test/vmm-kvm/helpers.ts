import { existsSync } from 'node:fs';
import { Machine } from '../../vmm/kvm/machine.js';
import { setupLongMode, setupProtectedMode } from '../../vmm/boot/cpu-mode.js';
import { runMachine, type VmRunResult, type RunOptions } from '../../vmm/vcpu/supervisor.js';
import { stubLogText, type StubData } from './fixtures/stub-model.js';

export const hasKvm = existsSync('/dev/kvm');
if (!hasKvm) console.log('skipping KVM tests: /dev/kvm does not exist on this machine');

export const STUB_MODEL = new URL('./fixtures/stub-model.ts', import.meta.url).href;

export type Mode = 'real' | 'protected' | 'long';

/** Puts vCPU `vcpu` at `entry` in the given mode (real: CS=0). */
export function setMode(m: Machine, vcpu: number, mode: Mode, entry: number): void {
  const v = m.vcpus[vcpu].fd;
  if (mode === 'protected') setupProtectedMode(m.ram.memory, v);
  else if (mode === 'long') setupLongMode(m.ram.memory, v);
  else {
    const s = v.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    v.setSregs(s);
  }
  const r = v.getRegs();
  r.rip = BigInt(entry);
  r.rflags = 2n;
  r.rsp = 0x7000n;
  v.setRegs(r);
}

export function newStubLog(): SharedArrayBuffer {
  return new SharedArrayBuffer(4 + 4096);
}

export async function runWithStub(
  m: Machine,
  opts: RunOptions = {},
  log = newStubLog(),
): Promise<VmRunResult & { log: string }> {
  const data: StubData = { log };
  const res = await runMachine(m, { module: STUB_MODEL, data }, opts);
  return { ...res, log: stubLogText(log) };
}

/** Resolves once the stub log contains `text` (the guest signals readiness through port 0x10). */
export async function waitForLog(log: SharedArrayBuffer, text: string, timeoutMs = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!stubLogText(log).includes(text)) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`guest never wrote ${JSON.stringify(text)}; log=${JSON.stringify(stubLogText(log))}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
