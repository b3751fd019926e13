import { buildPlatform } from '../vmm/devices/platform.js';
import { SharedArena } from '../vmm/devices/shared-state.js';
import type { BenchTable } from './types.js';

/** Cost of one emulated register access as the vCPU exit path sees it (bus lookup + arena lock + device). */
export async function run(): Promise<BenchTable[]> {
  const p = buildPlatform({
    arena: new SharedArena(new SharedArrayBuffer(1 << 20)),
    vcpus: 1,
    memBelow4g: 2 ** 30,
    memAbove4g: 0,
    serialOutput: () => {},
    events: () => {},
    irq: () => ({ trigger: () => {} }),
    routes: { setMsiRoute: () => {}, clearMsiRoute: () => {}, setMasked: () => {} },
    virtio: [],
  });
  const b1 = new Uint8Array(1);
  const b4 = new Uint8Array(4);
  const cases: [string, () => void][] = [
    ['serial LSR read (PIO 0x3fd)', () => p.pio.read(0x3fd, b1)],
    ['serial THR write (PIO 0x3f8, null sink)', () => p.pio.write(0x3f8, b1)],
    ['PCI vendor id via ECAM (MMIO)', () => p.mmio.read(0xe800_0000, b4)],
    ['unmapped PIO read', () => p.pio.read(0x2f8, b1)],
  ];
  const rows: (string | number)[][] = [];
  for (const [name, fn] of cases) {
    for (let i = 0; i < 200_000; i++) fn(); // warm up the JIT
    const n = 500_000;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn();
    const ns = Number(process.hrtime.bigint() - t0) / n;
    rows.push([name, ns.toFixed(0), (1e3 / ns).toFixed(2)]);
  }
  return [{ title: 'vmm-platform: device access cost (no KVM exit included)', columns: ['access', 'ns/op', 'M ops/s'], rows }];
}
