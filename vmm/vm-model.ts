// The VM's device model, built identically on the main thread and in every vCPU worker
// (see /tmp/vmm-threading.md): register state lives in one SharedArena.
import { logger, WarnLimiter } from '../protocol/log.js';
import { write as writeFd } from '../protocol/sys/fd.js';
import { SysError } from '../protocol/sys/libc.js';
import { buildPlatform, type Platform } from './devices/platform.js';
import { SharedArena } from './devices/shared-state.js';
import type { EventSink, OutputSink } from './devices/types.js';
import type { GsiInterrupts } from './kvm/irq-sources.js';
import { VirtioConsole } from './virtio/console.js';
import type { VirtioDevice } from './virtio/device.js';
import { VirtioRng } from './virtio/rng.js';
import type { CreateVcpuModel } from './vcpu/io.js';
import { vhostUserDevices, type VhostUserDeviceSpec, type VhostUserLink } from './vhost-user/index.js';

/** Structured-clone-safe description every thread builds the same model from. */
const sinkLog = logger('guest-output');
/** How often a sink that drops output says so again. */
const SINK_DROP_WARN_MS = 10_000;

export interface VmModelData {
  arena: SharedArrayBuffer;
  vcpus: number;
  memBelow4g: number;
  memAbove4g: number;
  /** fd guest serial output is written to (from the vCPU worker that runs the access); -1 discards. */
  serialFd: number;
  /** virtio-console present (its output is written on the main thread). */
  console: boolean;
  /** fd of virtio-console output, for the emergency writes vCPU threads take (-1: none). */
  consoleFd?: number;
  rngSrc: string;
  /** vhost-user devices (features and config read from their backends before the vCPUs start). */
  vhostUser?: VhostUserDeviceSpec[];
  /** The guest's physical address width (its CPUID): the 64-bit PCI window ends below 2^bits. */
  physAddrBits?: number;
  /** A UART at 0x3f8 (not with --serial off). */
  serialPort?: boolean;
}

export interface ModelThread {
  interrupts: GsiInterrupts;
  events: EventSink;
  /** Main thread only: where virtio-console output goes. */
  consoleOutput: OutputSink | null;
  /** Whether this thread writes serial output (vCPU workers do; main never runs guest code). */
  serialOutput: boolean;
  /** Main thread only: the backend connections of the vhost-user devices, by device id. */
  vhostUserLinks?: ReadonlyMap<string, VhostUserLink>;
}

/**
 * Guest output (serial, virtio-console) to `fd`. It never throws: what the host side cannot take is dropped, and said
 * once. A non-blocking fd that is full (a slow reader) drops output rather than stall the thread; one that failed
 * (EPIPE, ENOSPC, EIO) is given up on, since a failing sink must never become a device the guest sees failing.
 */
export function fdSink(fd: number, what: string): OutputSink {
  let broken = false;
  let dropped = 0;
  const drops = new WarnLimiter(sinkLog, 1, SINK_DROP_WARN_MS);
  return (data) => {
    if (broken) return;
    let off = 0;
    try {
      while (off < data.length) {
        const n = writeFd(fd, data.subarray(off));
        if (n <= 0) {
          dropped += data.length - off;
          drops.warn({ output: what, droppedBytes: dropped }, 'guest output is not read as fast as the guest writes it; dropping some');
          return;
        }
        off += n;
      }
    } catch (e) {
      broken = true;
      sinkLog.error({ output: what, err: e instanceof SysError ? e.code : String(e) }, 'guest output cannot be written; discarding it from now on');
    }
  };
}

export function buildVmModel(d: VmModelData, t: ModelThread): Platform {
  const virtio: VirtioDevice[] = [new VirtioRng(d.rngSrc)];
  if (d.console) virtio.push(new VirtioConsole(t.consoleOutput));
  virtio.push(...vhostUserDevices(d.vhostUser ?? [], t.vhostUserLinks));
  return buildPlatform({
    arena: new SharedArena(d.arena),
    vcpus: d.vcpus,
    memBelow4g: d.memBelow4g,
    memAbove4g: d.memAbove4g,
    serialOutput: t.serialOutput && d.serialFd >= 0 ? fdSink(d.serialFd, 'serial') : null,
    events: t.events,
    irq: (gsi) => t.interrupts.interrupt(gsi),
    routes: t.interrupts.routes,
    virtio,
    physAddrBits: d.physAddrBits,
    serialPort: d.serialPort,
  });
}

/** Entry point the vCPU workers load (vmm/vcpu/worker.ts). */
export const createVcpuModel: CreateVcpuModel = (ctx) => {
  const d = ctx.data as VmModelData;
  const p = buildVmModel(d, {
    interrupts: ctx.interrupts,
    events: ctx.events,
    // emerg_wr is a config write: the vCPU that makes it writes the byte.
    consoleOutput: d.consoleFd !== undefined && d.consoleFd >= 0 ? fdSink(d.consoleFd, 'console') : null,
    serialOutput: true,
  });
  return { pio: p.pio, mmio: p.mmio };
};
