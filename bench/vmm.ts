// kumo VMM figures on this machine's /dev/kvm: PIO exit round trip (vCPU worker vs a C loop),
// process start → first guest output, and RSS without guest RAM.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../vmm/kvm/machine.js';
import { runMachine } from '../vmm/vcpu/supervisor.js';
import type { BenchTable } from './types.js';
import { buildAndPin } from './build.js';

const EXITS = 100_000;
const ROUNDS = 3;
const KUMO = new URL('../bin/kumo.js', import.meta.url).pathname;

/** Real-mode guest: ecx = n; loop { out 0x10, al; inc al }; out 0x11 (poweroff). Same bytes as pio-loop.c. */
function pioGuest(n: number): Uint8Array {
  return Uint8Array.from([0x66, 0xb9, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff,
    0xe6, 0x10, 0xfe, 0xc0, 0x67, 0xe2, 0xf9, 0xb0, 0x00, 0xe6, 0x11, 0xeb, 0xfe]);
}

async function kumoPio(): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const m = Machine.create({ memory: { size: 64 << 20 }, vcpus: 1 });
    try {
      m.ram.memory.write(0x1000, pioGuest(EXITS));
      const v = m.vcpus[0].fd;
      const s = v.getSregs();
      s.cs.base = 0n;
      s.cs.selector = 0;
      v.setSregs(s);
      const r = v.getRegs();
      r.rip = 0x1000n;
      r.rflags = 2n;
      v.setRegs(r);
      const counter = new SharedArrayBuffer(8);
      const res = await runMachine(m, { module: new URL('./vmm-kvm/pio-model.ts', import.meta.url).href, data: counter });
      const c = new Int32Array(counter);
      if (c[0] !== EXITS || c[1] !== 0) throw new Error(`PIO bench: ${c[0]} exits, ${c[1]} bad values`);
      out.push((res.vcpus[0].runMs! * 1000) / res.vcpus[0].exits);
    } finally {
      m.close();
    }
  }
  return out;
}

function cPio(dir: string): number[] | string {
  const src = new URL('./vmm-kvm/pio-loop.c', import.meta.url).pathname;
  const bin = join(dir, 'pio-loop');
  const cc = spawnSync('cc', ['-O2', '-o', bin, src], { encoding: 'utf8' });
  if (cc.status !== 0) return `cc failed: ${cc.stderr || cc.error?.message}`;
  const out: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = spawnSync(bin, [String(EXITS)], { encoding: 'utf8' });
    const [exits, secs, bad] = r.stdout.trim().split(' ').map(Number);
    if (r.status !== 0 || exits !== EXITS || bad !== 0) return `C loop failed: ${r.stderr}`;
    out.push((secs * 1e6) / exits);
  }
  return out;
}

/** A PVH ELF whose entry writes "K" to the serial port then spins (kept alive for RSS reading). */
function spinKernel(): Buffer {
  const code = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xeb, 0xfe];
  const addr = 0x100000;
  const h = Buffer.alloc(64 + 2 * 56 + 20 + code.length);
  h.write('\x7fELF', 0, 'latin1');
  h[4] = 2; h[5] = 1; h[6] = 1;
  h.writeUInt16LE(2, 16); h.writeUInt16LE(0x3e, 18); h.writeUInt32LE(1, 20);
  h.writeBigUInt64LE(BigInt(addr), 24); h.writeBigUInt64LE(64n, 32);
  h.writeUInt16LE(64, 52); h.writeUInt16LE(56, 54); h.writeUInt16LE(2, 56);
  const noteOff = 64 + 112;
  const codeOff = noteOff + 20;
  const ph = (i: number, type: number, off: number, paddr: number, size: number) => {
    const o = 64 + i * 56;
    h.writeUInt32LE(type, o); h.writeBigUInt64LE(BigInt(off), o + 8);
    h.writeBigUInt64LE(BigInt(paddr), o + 16); h.writeBigUInt64LE(BigInt(paddr), o + 24);
    h.writeBigUInt64LE(BigInt(size), o + 32); h.writeBigUInt64LE(BigInt(size), o + 40);
  };
  ph(0, 1, codeOff, addr, code.length);
  ph(1, 4, noteOff, 0, 20);
  h.writeUInt32LE(4, noteOff); h.writeUInt32LE(4, noteOff + 4); h.writeUInt32LE(18, noteOff + 8);
  h.write('Xen\0', noteOff + 12, 'latin1'); h.writeUInt32LE(addr, noteOff + 16);
  Buffer.from(code).copy(h, codeOff);
  return h;
}

function rssKiB(pid: number): { rss: number; guest: number } {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const rss = Number(/^Rss:\s+(\d+) kB/m.exec(rollup)?.[1] ?? NaN);
  let guest = 0;
  let inGuest = false;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inGuest = /memfd:kumo-(guest|ram)/.test(line);
    else if (inGuest && line.startsWith('Rss:')) guest += Number(/(\d+)/.exec(line)![1]);
  }
  return { rss, guest };
}

/** Spawns kumo on the spinning kernel; returns ms to the first serial byte and RSS figures once it is up. */
async function kumoStartAndRss(kernel: string): Promise<{ firstOutputMs: number; rss: number; guest: number; threads: number }> {
  const t0 = performance.now();
  const p = spawn(process.execPath, [KUMO, '--kernel', kernel, '--memory', 'size=256M', '--serial', 'tty', '--console', 'off'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, KUMO_LOG: 'warn' },
  });
  try {
    const firstOutputMs = await new Promise<number>((resolve, reject) => {
      p.stdout.once('data', () => resolve(performance.now() - t0));
      p.once('exit', (c) => reject(new Error(`kumo exited (${c}) before guest output`)));
    });
    await new Promise((r) => setTimeout(r, 300));
    const { rss, guest } = rssKiB(p.pid!);
    const threads = Number(/^Threads:\s+(\d+)/m.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1] ?? 0);
    return { firstOutputMs, rss, guest, threads };
  } finally {
    p.kill('SIGKILL');
  }
}

async function bareNodeRss(): Promise<number> {
  const p = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 3000)'], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 300));
    return rssKiB(p.pid!).rss;
  } finally {
    p.kill('SIGKILL');
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f1 = (x: number) => Math.round(x * 10) / 10;

export async function run(): Promise<BenchTable[]> {
  if (!existsSync('/dev/kvm')) return [{ title: 'kumo VMM', columns: ['skipped'], rows: [['/dev/kvm missing']] }];
  const kumoRuns = buildAndPin();
  const dir = mkdtempSync(join(tmpdir(), 'kumo-bench-vmm-'));
  try {
    const js = await kumoPio();
    const c = cPio(dir);
    const jsMed = median(js);
    const pioRows: (string | number)[][] = [['kumo vCPU worker (koffi KVM_RUN loop, Bus dispatch in worker)', f1(jsMed), Math.round(1e6 / jsMed), js.map(f1).join(' / ')]];
    const notes = [`${EXITS} exits per round, ${ROUNDS} rounds, median shown; real-mode guest (CPL0, emulated by kvm_pvm).`];
    if (typeof c === 'string') notes.push(c);
    else {
      const cMed = median(c);
      pioRows.push(['minimal C loop (no irqchip)', f1(cMed), Math.round(1e6 / cMed), c.map(f1).join(' / ')]);
      pioRows.push(['ratio kumo / C (target <= 1.3)', f1(jsMed / cMed), '', '']);
    }
    const kernel = join(dir, 'spin.elf');
    writeFileSync(kernel, spinKernel());
    const starts: { firstOutputMs: number; rss: number; guest: number; threads: number }[] = [];
    for (let i = 0; i < ROUNDS; i++) starts.push(await kumoStartAndRss(kernel));
    const bare = await bareNodeRss();
    const s = starts.sort((a, b) => a.firstOutputMs - b.firstOutputMs)[Math.floor(starts.length / 2)];
    return [
      { title: 'PIO exit round trip on /dev/kvm', columns: ['loop', 'µs/exit', 'exits/s', 'rounds (µs)'], rows: pioRows, notes },
      {
        title: 'kumo process start and memory',
        columns: ['figure', 'value'],
        rows: [
          ['process start → first guest serial byte (ms, median of 3; includes node start-up)', Math.round(s.firstOutputMs)],
          ['  all rounds (ms)', starts.map((x) => Math.round(x.firstOutputMs)).join(' / ')],
          ['kumo RSS after boot, 1 vCPU, 256M guest (MiB)', f1(s.rss / 1024)],
          ['  of which guest RAM (memfd mappings)', f1(s.guest / 1024)],
          ['  kumo RSS excluding guest RAM (MiB)', f1((s.rss - s.guest) / 1024)],
          ['bare `node -e` RSS (MiB)', f1(bare / 1024)],
          ['kumo threads', s.threads],
        ],
        notes: ['First guest output comes from the first KVM_RUN: the guest writes to the serial port at its entry point.', `kumo runs as ${kumoRuns}; each vCPU worker is its own V8 isolate.`],
      },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
