// vCPU worker entry: builds this thread's device model, then runs KVM_RUN synchronously.
import { parentPort, workerData } from 'node:worker_threads';
import { gettid, setThreadName } from '../../protocol/sys/proc.js';
import { markStartupDone } from '../../protocol/sys/module-worker.js';
import { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { ReplayInterrupts } from '../kvm/irq-sources.js';
import { CTL_STATE, CTL_TID, STATE_EXITED, STATE_RUNNING } from './control.js';
import { VcpuRunLoop } from './run-loop.js';
import type { CreateVcpuModel } from './io.js';
import type { VcpuWorkerData, VcpuWorkerMessage } from './worker-data.js';

const d = workerData as VcpuWorkerData;
const port = parentPort!;
const post = (m: VcpuWorkerMessage) => port.postMessage(m);

async function main(): Promise<void> {
  setThreadName(`vcpu${d.id}`);
  const tid = gettid();
  Atomics.store(d.control, CTL_TID, tid);
  const mod = (await import(d.model.module)) as { createVcpuModel?: CreateVcpuModel };
  if (typeof mod.createVcpuModel !== 'function') throw new Error(`${d.model.module} does not export createVcpuModel`);
  const io = await mod.createVcpuModel({
    data: d.model.data,
    interrupts: new ReplayInterrupts(d.interrupts),
    events: (event) => post({ type: 'event', id: d.id, event }),
    vcpuId: d.id,
  });
  const loop = new VcpuRunLoop(new KvmVcpuFd(d.id, d.fd), d.runPtr, d.runSize, io, d.control);
  Atomics.store(d.control, CTL_STATE, STATE_RUNNING);
  markStartupDone();
  post({ type: 'ready', id: d.id, tid });
  const t0 = performance.now();
  const stop = loop.run();
  const runMs = performance.now() - t0;
  Atomics.store(d.control, CTL_STATE, STATE_EXITED);
  post({ type: 'exit', id: d.id, stop, exits: loop.exits, runMs });
}

// The main thread terminates this worker once it has the exit message (a model may hold handles open).
main().catch((e: unknown) => {
  markStartupDone();
  Atomics.store(d.control, CTL_STATE, STATE_EXITED);
  post({ type: 'failed', id: d.id, message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
});
