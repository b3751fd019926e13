// A guest's-eye view of the platform: builds the device model with vhost-user devices, drives the
// virtio-pci transport over the buses like Linux's virtio_pci_modern, and acts as the virtio driver.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { GuestMemory } from '../../protocol/memory/index.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { compactLayout, DriverQueue, GuestAllocator, type QueueLayout } from '../../protocol/virtqueue/index.js';
import { buildPlatform, type Platform } from '../../vmm/devices/platform.js';
import { SharedArena } from '../../vmm/devices/shared-state.js';
import type { InterruptRoutes, PlatformEvent } from '../../vmm/devices/types.js';
import { VirtioActivator } from '../../vmm/virtio/activation.js';
import { EventLoop } from '../../vmm/virtio/event-loop.js';
import type { VirtioDevice } from '../../vmm/virtio/device.js';
import { withVhostUserEvents } from '../../vmm/vhost-user/index.js';

export const MiB = 1 << 20;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const noRoutes: InterruptRoutes = { setMsiRoute: () => {}, clearMsiRoute: () => {}, setMasked: () => {} };

/** Guest RAM + the device model + the main-thread activation path, with one eventfd per GSI (as KVM irqfds). */
export class TestVm {
  readonly mem: GuestMemory;
  readonly gsiFds = new Map<number, number>();
  readonly events: PlatformEvent[] = [];
  readonly kicks = new Map<number, number>(); // notify address → ioeventfd
  readonly loop = new EventLoop();
  readonly alloc: GuestAllocator;
  p!: Platform;
  private activator!: VirtioActivator;
  handle!: (e: PlatformEvent) => boolean;
  readonly arena = SharedArena.create();

  constructor(memSize = 32 * MiB) {
    this.mem = GuestMemory.anonymous([{ guestAddr: 0, size: memSize }]);
    this.alloc = new GuestAllocator(MiB, memSize - MiB);
  }

  callFd = (gsi: number): number => {
    const fd = this.gsiFds.get(gsi);
    if (fd === undefined) throw new Error(`no eventfd for GSI ${gsi}`);
    return fd;
  };

  build(devices: VirtioDevice[]): Platform {
    this.p = buildPlatform({
      arena: this.arena,
      vcpus: 1,
      memBelow4g: this.mem.regions[0].size,
      memAbove4g: 0,
      serialOutput: null,
      events: (e) => this.events.push(e),
      irq: (gsi) => {
        const fd = eventfd();
        this.gsiFds.set(gsi, fd);
        return { trigger: () => eventfdWrite(fd) };
      },
      routes: noRoutes,
      virtio: devices,
    });
    this.activator = new VirtioActivator(this.p.virtio, this.mem, {
      register: (addr, fd) => this.kicks.set(addr, fd),
      unregister: (addr) => this.kicks.delete(addr),
    }, this.loop);
    this.handle = withVhostUserEvents(this.p.virtio, (e) => this.activator.handle(e));
    return this.p;
  }

  /** Another thread's model over the same arena (what a vCPU worker builds). */
  buildReplica(devices: VirtioDevice[]): Platform {
    return buildPlatform({
      arena: new SharedArena(this.arena.sab),
      vcpus: 1,
      memBelow4g: this.mem.regions[0].size,
      memAbove4g: 0,
      serialOutput: null,
      events: (e) => this.events.push(e),
      irq: () => ({ trigger: () => {} }),
      routes: noRoutes,
      virtio: devices,
    });
  }

  /** Delivers the events the transport posted (what the main thread does with vCPU messages). */
  pump(): void {
    for (const e of this.events.splice(0)) this.handle(e);
  }

  close(): void {
    this.loop.close();
    for (const fd of this.gsiFds.values()) closeQuiet(fd);
    this.mem.close();
  }
}

function le(v: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = Math.floor(v / 2 ** (8 * i)) & 0xff;
  return b;
}
function rd(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i];
  return v;
}

export interface GuestQueue {
  index: number;
  dq: DriverQueue<number>;
  layout: QueueLayout;
  vector: number;
}

/** The guest driver of one virtio-pci function, through MMIO/ECAM accesses only. */
export class GuestDriver {
  readonly bar: number;
  readonly slot: number;
  queues: GuestQueue[] = [];
  features = 0n;

  constructor(
    readonly vm: TestVm,
    readonly index: number,
  ) {
    this.bar = vm.p.virtio[index].barAddress();
    this.slot = vm.p.virtio[index].slot;
  }

  r(off: number, len: number): number {
    const d = new Uint8Array(len);
    this.vm.p.mmio.read(this.bar + off, d);
    return rd(d);
  }
  w(off: number, v: number, len: number): void {
    this.vm.p.mmio.write(this.bar + off, le(v, len));
  }
  private ecamR(reg: number, len: number): number {
    const d = new Uint8Array(len);
    this.vm.p.mmio.read(0xe800_0000 + (this.slot << 15) + reg, d);
    return rd(d);
  }
  private ecamW(reg: number, v: number, len: number): void {
    this.vm.p.mmio.write(0xe800_0000 + (this.slot << 15) + reg, le(v, len));
  }

  deviceFeatures(): bigint {
    this.w(0x00, 0, 4);
    const lo = this.r(0x04, 4);
    this.w(0x00, 1, 4);
    const hi = this.r(0x04, 4);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  config(off: number, len: number): number {
    return this.r(0x4000 + off, len);
  }
  configBytes(off: number, len: number): Uint8Array {
    const d = new Uint8Array(len);
    this.vm.p.mmio.read(this.bar + 0x4000 + off, d);
    return d;
  }
  writeConfig(off: number, v: number, len: number): void {
    this.w(0x4000 + off, v, len);
  }

  /** Enables MSI-X with every vector unmasked (the guest kernel does this before DRIVER_OK). */
  enableMsix(): void {
    let ptr = this.ecamR(0x34, 1);
    while (ptr && (this.ecamR(ptr, 1) !== 0x11)) ptr = this.ecamR(ptr + 1, 1);
    if (!ptr) throw new Error('no MSI-X capability');
    const vectors = (this.ecamR(ptr + 2, 2) & 0x7ff) + 1;
    this.ecamW(ptr + 2, 0x8000, 2);
    for (let v = 0; v < vectors; v++) {
      this.w(0x8000 + v * 16, 0xfee0_0000, 4);
      this.w(0x8000 + v * 16 + 8, 0x40 + v, 4);
      this.w(0x8000 + v * 16 + 12, 0, 4);
    }
  }

  /** Reset, ACK, DRIVER, features (∩ wanted), FEATURES_OK, queues, DRIVER_OK. Returns the negotiated features. */
  start(want: bigint, queueSizes: number[]): bigint {
    this.w(0x14, 0, 1);
    this.vm.pump();
    this.w(0x14, 1, 1);
    this.w(0x14, 3, 1);
    const f = this.deviceFeatures() & want;
    this.w(0x08, 0, 4);
    this.w(0x0c, Number(f & 0xffff_ffffn), 4);
    this.w(0x08, 1, 4);
    this.w(0x0c, Number(f >> 32n), 4);
    this.w(0x14, 3 | 8, 1);
    if (!(this.r(0x14, 1) & 8)) throw new Error('FEATURES_OK refused');
    this.features = f;
    this.w(0x10, 0, 2); // config vector 0
    this.queues = queueSizes.map((size, index) => {
      const layout = compactLayout(this.vm.alloc.allocOrThrow(16 * size + 6 + 2 * size + 6 + 8 * size + 64, 4096), size);
      this.w(0x16, index, 2);
      this.w(0x18, size, 2);
      this.w(0x1a, index + 1, 2);
      this.w(0x20, layout.descAddr, 4);
      this.w(0x24, 0, 4);
      this.w(0x28, layout.availAddr, 4);
      this.w(0x2c, 0, 4);
      this.w(0x30, layout.usedAddr, 4);
      this.w(0x34, 0, 4);
      this.w(0x1c, 1, 2);
      const dq = new DriverQueue<number>(this.vm.mem, layout, { eventIdx: (f & (1n << 29n)) !== 0n });
      return { index, dq, layout, vector: index + 1 };
    });
    this.w(0x14, 3 | 8 | 4, 1);
    this.vm.pump();
    return f;
  }

  /** The guest's notify write, as KVM would deliver it: a write to the ioeventfd registered at the notify address. */
  kick(q: GuestQueue): void {
    const fd = this.vm.kicks.get(this.vm.p.virtio[this.index].notifyAddress(q.index));
    if (fd === undefined) throw new Error(`no ioeventfd for queue ${q.index}`);
    eventfdWrite(fd);
  }

  /** Waits for the queue's MSI (the GSI eventfd the backend writes) and returns the used buffers. */
  async waitUsed(q: GuestQueue, want = 1, timeoutMs = 20_000): Promise<{ token: number; len: number }[]> {
    const gsi = this.vm.p.virtio[this.index].msix.gsi(q.vector);
    const fd = this.vm.callFd(gsi);
    const out: { token: number; len: number }[] = [];
    const until = Date.now() + timeoutMs;
    let interrupts = 0;
    while (out.length < want) {
      if (eventfdRead(fd) > 0) interrupts++;
      out.push(...q.dq.takeUsed().map((u) => ({ token: u.token, len: u.len })));
      if (out.length >= want) break;
      if (Date.now() > until) throw new Error(`timed out waiting for ${want} used buffers on queue ${q.index}`);
      await sleep(2);
    }
    if (interrupts === 0) {
      // The used entries may land just before the interrupt: give the backend a moment to signal.
      for (let i = 0; i < 500 && eventfdRead(fd) === 0; i++) await sleep(2);
    }
    return out;
  }

  reset(): void {
    this.w(0x14, 0, 1);
    this.vm.pump();
  }
}

/** Spawns a backend process and waits for its socket to appear. */
export async function startProcess(cmd: string, args: string[], socket: string, env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'warn', ...env } });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited ${child.exitCode}: ${err}`);
    if (existsSync(socket)) {
      await sleep(100);
      return child;
    }
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`${cmd} did not create ${socket}: ${err}`);
}

export async function stopProcess(child: ChildProcess | null): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}
