import { describe, it, expect } from 'vitest';
import { Machine } from '../../vmm/kvm/machine.js';
import { eventfd, eventfdRead, closeQuiet } from '../../protocol/sys/fd.js';
import { x86 } from './fixtures/guests.js';
import { hasKvm, newStubLog, runWithStub, setMode, waitForLog } from './helpers.js';

// Stub model ports: 0x10 appends to the log, 0x11 value 0 = poweroff / 1 = reset, MMIO 0xd000_0000 echoes.
const POWEROFF = [...x86.movAl(0), ...x86.outImmAl(0x11)];

function withMachine(vcpus: number, fn: (m: Machine) => Promise<void>): Promise<void> {
  const m = Machine.create({ memory: { size: 64 << 20 }, vcpus });
  return fn(m).finally(() => m.close());
}

describe.skipIf(!hasKvm)('vCPU exit loop on /dev/kvm (stub device model)', () => {
  it('real mode: PIO writes reach the worker bus; a port write powers off', () =>
    withMachine(1, async (m) => {
      m.ram.memory.write(0x1000, Uint8Array.from([...x86.print16('Hi!', 0x10), ...POWEROFF, ...x86.jmpSelf()]));
      setMode(m, 0, 'real', 0x1000);
      const res = await runWithStub(m);
      expect(res.outcome).toEqual({ kind: 'poweroff', source: 'stub' });
      expect(res.log).toBe('Hi!');
      expect(res.vcpus[0].stop.kind).toBe('stopped');
    }));

  it('protected mode: PIO in/out and a reset request', () =>
    withMachine(1, async (m) => {
      // in from 0x12 returns a counter (0, then 1); echo both to the log
      const code = [
        ...x86.movDx(0x12), ...x86.inEaxDx(), ...x86.movDx(0x10), ...x86.outDxAl(),
        ...x86.movDx(0x12), ...x86.inEaxDx(), ...x86.movDx(0x10), ...x86.outDxAl(),
        ...x86.print('P', 0x10), ...x86.movAl(1), ...x86.outImmAl(0x11), ...x86.jmpSelf(),
      ];
      m.ram.memory.write(0x100000, Uint8Array.from(code));
      setMode(m, 0, 'protected', 0x100000);
      const res = await runWithStub(m);
      expect(res.outcome).toEqual({ kind: 'reset', source: 'stub' });
      expect([...Buffer.from(res.log, 'latin1')]).toEqual([0, 1, 0x50]);
    }));

  it('long mode: PIO and MMIO exits (write then read back through the device)', () =>
    withMachine(1, async (m) => {
      const code = [
        ...x86.print('L', 0x10),
        ...x86.movEbx(0xd000_0000), ...x86.movEax(0x4b4f), ...x86.storeEaxAtEbx(), // MMIO write "OK"
        ...x86.movEax(0), ...x86.loadEaxFromEbx(), // MMIO read
        ...x86.movDx(0x10), ...x86.outDxAl(), 0xc1, 0xe8, 0x08 /* shr eax,8 */, ...x86.outDxAl(),
        ...POWEROFF, ...x86.jmpSelf(),
      ];
      m.ram.memory.write(0x100000, Uint8Array.from(code));
      setMode(m, 0, 'long', 0x100000);
      const res = await runWithStub(m);
      expect(res.outcome.kind).toBe('poweroff');
      expect(res.log).toBe('LOK');
    }));

  it('triple fault (ud2 with an empty IDT) ends the VM as a reset request, as Cloud Hypervisor takes it', () =>
    withMachine(1, async (m) => {
      m.ram.memory.write(0x100000, Uint8Array.from([...x86.print('T', 0x10), ...x86.ud2()]));
      setMode(m, 0, 'protected', 0x100000);
      const res = await runWithStub(m);
      expect(res.log).toBe('T');
      expect(res.outcome).toEqual({ kind: 'reset', source: 'vcpu0 triple fault' });
    }));

  it('MSI through irqfd reaches the guest IDT handler', () =>
    withMachine(1, async (m) => {
      const mem = m.ram.memory;
      const VECTOR = 0x40;
      const handler = 0x5000;
      // 64-bit interrupt gate for VECTOR in an IDT at 0x3000
      const gate = Buffer.alloc(16);
      gate.writeUInt16LE(handler & 0xffff, 0);
      gate.writeUInt16LE(0x08, 2);
      gate[5] = 0x8e;
      gate.writeUInt16LE((handler >>> 16) & 0xffff, 6);
      mem.write(0x3000 + VECTOR * 16, gate);
      mem.write(handler, Uint8Array.from([
        ...x86.print('I', 0x10),
        ...x86.movEbx(0xfee0_00b0), ...x86.movEax(0), ...x86.storeEaxAtEbx(), // EOI
        ...POWEROFF, ...x86.jmpSelf(),
      ]));
      mem.write(0x4000, Uint8Array.from([
        ...x86.movEbx(0xfee0_00f0), ...x86.movEax(0x1ff), ...x86.storeEaxAtEbx(), // LAPIC software enable
        ...x86.sti(), ...x86.print('R', 0x10), ...x86.jmpSelf(),
      ]));
      setMode(m, 0, 'long', 0x4000);
      const v = m.vcpus[0].fd;
      const s = v.getSregs();
      s.idt = { base: 0x3000n, limit: 0xfff };
      v.setSregs(s);
      const gsi = 40;
      const irq = m.interrupts.interrupt(gsi);
      const log = newStubLog();
      const run = runWithStub(m, {}, log);
      await waitForLog(log, 'R');
      m.interrupts.routes.setMsiRoute(gsi, { addressLo: 0xfee0_0000, addressHi: 0, data: VECTOR });
      irq.trigger();
      const res = await run;
      expect(res.outcome.kind).toBe('poweroff');
      expect(res.log).toBe('RI');
    }));

  it('a masked MSI stays pending and is delivered at unmask', () =>
    withMachine(1, async (m) => {
      const mem = m.ram.memory;
      const gate = Buffer.alloc(16);
      gate.writeUInt16LE(0x5000, 0);
      gate.writeUInt16LE(0x08, 2);
      gate[5] = 0x8e;
      mem.write(0x3000 + 0x41 * 16, gate);
      mem.write(0x5000, Uint8Array.from([...x86.print('I', 0x10), ...POWEROFF, ...x86.jmpSelf()]));
      mem.write(0x4000, Uint8Array.from([
        ...x86.movEbx(0xfee0_00f0), ...x86.movEax(0x1ff), ...x86.storeEaxAtEbx(),
        ...x86.sti(), ...x86.print('R', 0x10), ...x86.jmpSelf(),
      ]));
      setMode(m, 0, 'long', 0x4000);
      const v = m.vcpus[0].fd;
      const s = v.getSregs();
      s.idt = { base: 0x3000n, limit: 0xfff };
      v.setSregs(s);
      const irq = m.interrupts.interrupt(41);
      const routes = m.interrupts.routes;
      routes.setMsiRoute(41, { addressLo: 0xfee0_0000, addressHi: 0, data: 0x41 });
      routes.setMasked(41, true);
      const log = newStubLog();
      const run = runWithStub(m, {}, log);
      await waitForLog(log, 'R');
      irq.trigger();
      await new Promise((r) => setTimeout(r, 200));
      expect(Buffer.from(new Uint8Array(log, 4, 2)).toString('latin1')).toBe('R\0');
      routes.setMasked(41, false);
      const res = await run;
      expect(res.log).toBe('RI');
    }));

  it('ioeventfd: guest notify writes count in the eventfd without userspace exits', () =>
    withMachine(1, async (m) => {
      const N = 100;
      const efd = eventfd();
      try {
        m.interrupts.register(0xd000_1000, efd);
        m.ram.memory.write(0x100000, Uint8Array.from([
          ...x86.movEbx(0xd000_1000), ...x86.movEcx(N),
          ...x86.storeEaxAtEbx(), 0xff, 0xc9 /* dec ecx */, 0x75, 0xfa /* jnz -6 */,
          ...POWEROFF, ...x86.jmpSelf(),
        ]));
        setMode(m, 0, 'long', 0x100000);
        const res = await runWithStub(m);
        expect(res.outcome.kind).toBe('poweroff');
        expect(eventfdRead(efd)).toBe(N);
        expect(res.vcpus[0].exits).toBeLessThan(10);
        m.interrupts.unregister(0xd000_1000, efd);
      } finally {
        closeQuiet(efd);
      }
    }));

  it('an AP started by INIT/SIPI runs real-mode code (2 vCPUs)', () =>
    withMachine(2, async (m) => {
      const mem = m.ram.memory;
      mem.write(0x2000, Uint8Array.from([...x86.print16('A', 0x10), ...POWEROFF, ...x86.jmpSelf()]));
      // The BSP prints before it starts the AP: the AP's power-off may end the run at any moment after.
      mem.write(0x100000, Uint8Array.from([
        ...x86.print('B', 0x10),
        ...x86.movEbx(0xfee0_00f0), ...x86.movEax(0x1ff), ...x86.storeEaxAtEbx(),
        ...x86.movEbx(0xfee0_0310), ...x86.movEax(0x0100_0000), ...x86.storeEaxAtEbx(), // ICR high: APIC id 1
        ...x86.movEbx(0xfee0_0300), ...x86.movEax(0x4500), ...x86.storeEaxAtEbx(), // INIT
        ...x86.movEax(0x4602), ...x86.storeEaxAtEbx(), // SIPI, vector 2 → 0x2000
        ...x86.jmpSelf(),
      ]));
      setMode(m, 0, 'protected', 0x100000);
      const res = await runWithStub(m);
      expect(res.outcome).toEqual({ kind: 'poweroff', source: 'stub' });
      expect([...res.log].sort().join('')).toBe('AB');
      expect(res.vcpus.map((r) => r.stop.kind)).toEqual(['stopped', 'stopped']);
    }));
});
