// The VM's device model, built identically on the main thread and in every vCPU worker
// (see /tmp/vmm-threading.md): register state lives in one SharedArena.
import { write as writeFd } from '../protocol/sys/fd.js';
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
export interface VmModelData {
  arena: SharedArrayBuffer;
  vcpus: number;
  memBelow4g: number;
  memAbove4g: number;
  /** fd guest serial output is written to (from the vCPU worker that runs the access); -1 discards. */
  serialFd: number;
  /** virtio-console present (its output is written on the main thread). */
  console: boolean;
  rngSrc: string;
  /** vhost-user devices (features and config read from their backends before the vCPUs start). */
  vhostUser?: VhostUserDeviceSpec[];
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

export function fdSink(fd: number): OutputSink {
  return (data) => {
    let off = 0;
    while (off < data.length) {
      const n = writeFd(fd, data.subarray(off));
      if (n <= 0) return; // a full non-blocking pipe drops output rather than stall a vCPU
      off += n;
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
    serialOutput: t.serialOutput && d.serialFd >= 0 ? fdSink(d.serialFd) : null,
    events: t.events,
    irq: (gsi) => t.interrupts.interrupt(gsi),
    routes: t.interrupts.routes,
    virtio,
  });
}

/** Entry point the vCPU workers load (vmm/vcpu/worker.ts). */
export const createVcpuModel: CreateVcpuModel = (ctx) => {
  const p = buildVmModel(ctx.data as VmModelData, {
    interrupts: ctx.interrupts,
    events: ctx.events,
    consoleOutput: null,
    serialOutput: true,
  });
  return { pio: p.pio, mmio: p.mmio };
};
