// VM assembly: config → (checks, no KVM) → guest RAM + KVM VM → device model → boot payload →
// vCPU workers → wait for poweroff / reset / error.
import { logger } from '../protocol/log.js';
import { existsSync, fstatSync } from 'node:fs';
import { openFile, closeQuiet, O_WRONLY, O_CREAT, O_TRUNC, O_APPEND, O_CLOEXEC, O_RDONLY, O_NONBLOCK } from '../protocol/sys/fd.js';
import { SysError } from '../protocol/sys/libc.js';
import { ConfigError } from './config/errors.js';
import { Machine } from './kvm/machine.js';
import { SharedArena } from './devices/shared-state.js';
import { EventLoop } from './virtio/event-loop.js';
import { VirtioActivator } from './virtio/activation.js';
import { readInitramfs, readKernel, type KernelImage } from './boot/kernel-image.js';
import { checkBootFits, loadKernel, type BootEntry } from './boot/load.js';
import { applyBootEntry } from './boot/entry.js';
import { configureVcpu } from './boot/vcpu-setup.js';
import { ramRanges, RAM_64BIT_START } from './memory/layout.js';
import { runMachine, type VmRunResult } from './vcpu/supervisor.js';
import { buildVmModel, fdSink, type VmModelData } from './vm-model.js';
import type { VmConfig } from './config/vm-config.js';
import type { CpuidEntry } from './kvm/cpuid-struct.js';
import type { ConsoleConfig } from './config/console.js';
import type { GuestMemory } from '../protocol/memory/index.js';
import type { Platform } from './devices/platform.js';
import type { PlatformEvent } from './devices/types.js';
import { buildAcpiTables } from './acpi/index.js';
import { VirtioConsole } from './virtio/console.js';
import { attachVhostUserDevices, VhostUserDevice, withVhostUserEvents, type VhostUserAttachment } from './vhost-user/index.js';
import { moduleUrl } from './module-root.js';

const log = logger('vm');

/** Writes ACPI tables for the model into guest RAM; returns the RSDP address (null: no ACPI). */
export type AcpiWriter = (mem: GuestMemory, platform: Platform, cfg: VmConfig) => number | null;

/** Cloud Hypervisor-style ACPI tables (RSDP at 0xA0000) for the model, written into guest RAM. */
export const writeAcpi: AcpiWriter = (mem, platform, cfg) => {
  const { rsdpAddr, blobs } = buildAcpiTables({ vcpus: cfg.cpus.boot, pciMmio64: platform.highMmio, serial: platform.serial !== null });
  for (const b of blobs) mem.write(b.addr, b.bytes);
  return rsdpAddr;
};

export interface PreparedBoot {
  kernel: KernelImage;
  initramfs: Buffer | null;
}

/** Everything that can fail without touching KVM: files, formats, sizes. Throws KumoError subclasses. */
export function prepareBoot(cfg: VmConfig): PreparedBoot {
  cfg.validate();
  const kernel = readKernel(cfg.payload.kernel);
  const initramfs = cfg.payload.initramfs ? readInitramfs(cfg.payload.initramfs) : null;
  checkBootFits({ kernel, initramfs, cmdline: cfg.payload.cmdline, memSize: cfg.memory.size });
  checkRngSource(cfg.rng.src);
  return { kernel, initramfs };
}

/**
 * The guest's virtio-rng opens its source at DRIVER_OK; one that cannot be read would leave it a device that never
 * answers. As Cloud Hypervisor, refuse it before the VM starts.
 */
function checkRngSource(src: string): void {
  let fd = -1;
  try {
    fd = openFile(src, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fstatSync(fd).isDirectory()) throw new ConfigError(`--rng: src=${src} is a directory`, { src });
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(`--rng: cannot read src=${src}: ${e instanceof SysError ? e.code : (e as Error).message}`, { src });
  } finally {
    if (fd >= 0) closeQuiet(fd);
  }
}

/**
 * Where guest output goes. `blocking` (the serial port, written from vCPU threads): a tty or pipe on stdout is opened
 * anew, as a blocking file description of its own (Node keeps stdout's non-blocking), so a slow reader holds the guest
 * back instead of losing its output, as with Cloud Hypervisor.
 */
function openOutput(c: ConsoleConfig, blocking = false): number {
  switch (c.mode) {
    case 'Tty':
      return blocking ? blockingStdout() : 1;
    case 'File':
      return openFile(c.file!, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644);
    default:
      return -1;
  }
}

function blockingStdout(): number {
  try {
    const st = fstatSync(1);
    if (st.isFIFO() || st.isCharacterDevice()) return openFile('/proc/self/fd/1', O_WRONLY | O_CLOEXEC);
  } catch {
    // no /proc, or stdout closed: fd 1 as it is
  }
  return 1;
}

export interface PlatformRunOptions {
  serialFd: number;
  /** false: no UART at all (--serial off). */
  serialPort?: boolean;
  consoleFd: number;
  console: boolean;
  rngSrc: string;
  /** Called after the model is built, before vCPUs start (ACPI tables, kernel loading, vCPU state). */
  prepare?: (platform: Platform) => void;
  onRunning?: () => void;
  vhostUser?: VhostUserAttachment;
}

/** The physical address width the guest's CPUID leaf 0x80000008 reports (KVM passes the host's on); 39 if absent. */
export function physAddrBits(cpuid: readonly CpuidEntry[]): number {
  const bits = (cpuid.find((e) => e.function === 0x8000_0008)?.eax ?? 0) & 0xff;
  return bits >= 36 ? bits : 39;
}

/** Builds the device model over `machine` (main thread + vCPU workers) and runs the vCPUs to the end. */
export async function runPlatform(machine: Machine, o: PlatformRunOptions): Promise<VmRunResult & { platform: Platform }> {
  const size = machine.ram.size;
  const ranges = ramRanges(size);
  const data: VmModelData = {
    arena: SharedArena.create().sab,
    vcpus: machine.vcpus.length,
    memBelow4g: ranges[0].size,
    memAbove4g: ranges.find((r) => r.guestAddr === RAM_64BIT_START)?.size ?? 0,
    serialFd: o.serialFd,
    serialPort: o.serialPort,
    console: o.console,
    consoleFd: o.consoleFd,
    rngSrc: o.rngSrc,
    vhostUser: o.vhostUser?.specs,
    physAddrBits: physAddrBits(machine.kvm.supportedCpuid()),
  };
  const loop = new EventLoop();
  try {
    let handle: ((e: PlatformEvent) => boolean) | null = null;
    const platform = buildVmModel(data, {
      interrupts: machine.interrupts,
      events: (e) => handle?.(e),
      consoleOutput: o.consoleFd >= 0 ? fdSink(o.consoleFd, 'console') : null,
      serialOutput: false,
      vhostUserLinks: o.vhostUser?.links,
    });
    for (const t of platform.virtio) {
      const dev = t.device;
      if (dev instanceof VhostUserDevice && dev.link) dev.link.attach(loop, () => t.needsReset());
    }
    const act = new VirtioActivator(platform.virtio, machine.ram.memory, machine.interrupts, loop);
    const onEvent = withVhostUserEvents(platform.virtio, (e) => act.handle(e));
    handle = onEvent;
    o.prepare?.(platform);
    loop.start();
    const res = await runMachine(machine, { module: moduleUrl('vmm/vm-model').href, data }, { onEvent, onRunning: o.onRunning });
    return { ...res, platform };
  } finally {
    await loop.stop();
  }
}

/**
 * Interactive stdin (a terminal only: piped stdin is left alone) goes to the serial port when it is
 * on the tty, else to virtio-console. Returns the detach function.
 */
function attachTtyInput(cfg: VmConfig, platform: Platform): () => void {
  const stdin = process.stdin;
  if (!stdin.isTTY) return () => {};
  let sink: ((b: Uint8Array) => void) | null = null;
  const serial = platform.serial;
  if (cfg.serial.mode === 'Tty' && serial) sink = (b) => void serial.enqueueInput(b);
  else if (cfg.console.mode === 'Tty') {
    const con = platform.virtio.map((t) => t.device).find((d): d is VirtioConsole => d instanceof VirtioConsole);
    if (con) sink = (b) => void con.input(b);
  }
  if (!sink) return () => {};
  const onData = (b: Buffer) => sink!(b);
  stdin.setRawMode(true);
  stdin.on('data', onData);
  return () => {
    stdin.off('data', onData);
    stdin.setRawMode(false);
    stdin.pause();
  };
}

/** Boots a VM and runs it to the end. */
export async function runVm(
  cfg: VmConfig,
  opts: { prepared?: PreparedBoot; acpi?: AcpiWriter; onRunning?: () => void; kvmPath?: string } = {},
): Promise<VmRunResult & { entry: BootEntry | null }> {
  const prepared = opts.prepared ?? prepareBoot(cfg);
  const serialFd = openOutput(cfg.serial, true);
  const consoleFd = cfg.console.mode === 'Off' ? -1 : openOutput(cfg.console);
  const fds = [serialFd, consoleFd].filter((fd) => fd > 2);
  let machine: Machine | null = null;
  let detachInput = () => {};
  let vhostUser: VhostUserAttachment | null = null;
  try {
    machine = Machine.create({
      memory: { size: cfg.memory.size, hugepages: cfg.memory.hugepages, hugepageSize: cfg.memory.hugepages ? cfg.memory.effectiveHugepageSize() : undefined },
      vcpus: cfg.cpus.boot,
      kvmPath: opts.kvmPath,
    });
    const m = machine;
    vhostUser = await attachVhostUserDevices(cfg.vhostUser, (gsi) => m.interrupts.interrupt(gsi).fd, { reconnectForMs: reconnectWindowMs() });
    let entry: BootEntry | null = null;
    const res = await runPlatform(m, {
      serialFd,
      serialPort: cfg.serial.mode !== 'Off',
      consoleFd,
      console: cfg.console.mode !== 'Off',
      rngSrc: cfg.rng.src,
      vhostUser: vhostUser ?? undefined,
      onRunning: opts.onRunning,
      prepare: (platform) => {
        const rsdp = (opts.acpi ?? writeAcpi)(m.ram.memory, platform, cfg);
        const e = loadKernel(m.ram.memory, {
          kernel: prepared.kernel,
          initramfs: prepared.initramfs,
          cmdline: cfg.payload.cmdline,
          memSize: cfg.memory.size,
          rsdp,
        });
        const cpuid = m.kvm.supportedCpuid();
        for (const v of m.vcpus) configureVcpu(v.fd, cpuid, cfg.cpus.boot);
        applyBootEntry(m.ram.memory, m.vcpus[0].fd, e);
        log.info({ kernel: prepared.kernel.kind, entry: '0x' + e.rip.toString(16), rsdp, initramfs: e.initramfs }, 'booting');
        // A stock kernel spends minutes in its emulator and then faults (cmpxchg16b, xrstor): say why nothing comes.
        if (existsSync('/sys/module/kvm_pvm')) {
          log.info('/dev/kvm is kvm_pvm, a software KVM: stock Linux kernels do not boot on it (small guests do); run kumo inside the nested lab (npm run lab -- ...)');
        }
        if (cfg.cpus.max > cfg.cpus.boot) {
          log.warn({ boot: cfg.cpus.boot, max: cfg.cpus.max }, 'CPU hot-plug is not supported: the guest gets the boot vCPUs only (max is accepted for Cloud Hypervisor compatibility)');
        }
        entry = e;
        detachInput = attachTtyInput(cfg, platform);
      },
    });
    return { ...res, entry };
  } finally {
    detachInput();
    vhostUser?.close();
    machine?.close();
    for (const fd of fds) closeQuiet(fd);
  }
}

/**
 * How long a vhost-user back-end that hung up under a running guest has to come back: 60 s, as Cloud Hypervisor
 * retries; KUMO_VHOST_USER_RECONNECT_MS changes it (0: give up at once).
 */
function reconnectWindowMs(): number {
  const v = process.env.KUMO_VHOST_USER_RECONNECT_MS;
  const ms = v === undefined || v === '' ? NaN : Number(v);
  return Number.isFinite(ms) && ms >= 0 ? ms : 60_000;
}
