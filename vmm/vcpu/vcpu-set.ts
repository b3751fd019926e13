import type { Worker } from 'node:worker_threads';
import { getpid, tgkill, SIGUSR2 } from '../../protocol/sys/proc.js';
import { viewOf } from '../../protocol/sys/mem.js';
import { logger } from '../../protocol/log.js';
import { RUN } from '../kvm/exits.js';
import type { InterruptsDescriptor } from '../kvm/irq-sources.js';
import type { PlatformEvent } from '../devices/types.js';
import { CTL_STOP, CTL_TID, newControl } from './control.js';
import { startTsWorker } from './ts-worker.js';
import type { ModelRef } from './io.js';
import type { VcpuStop } from './run-loop.js';
import type { VcpuWorkerData, VcpuWorkerMessage } from './worker-data.js';
import { moduleUrl } from '../module-root.js';

const log = logger('vcpus');

export interface VcpuHandle {
  id: number;
  fd: number;
  runPtr: bigint;
  runSize: number;
}

export interface VcpuResult {
  id: number;
  stop: VcpuStop | { kind: 'worker-failed'; message: string };
  exits: number;
  /** Time the worker spent in its run loop (first KVM_RUN to loop exit). */
  runMs?: number;
}

let signalInstalled = false;
/** A real process-wide SIGUSR2 handler makes a blocked KVM_RUN return EINTR when we tgkill its thread. */
function installKickHandler(): void {
  if (signalInstalled) return;
  signalInstalled = true;
  process.on('SIGUSR2', () => {});
}

class VcpuThread {
  readonly control = newControl();
  readonly run8: Uint8Array;
  worker: Worker | null = null;
  result: VcpuResult | null = null;
  readonly done: Promise<VcpuResult>;
  private resolveDone!: (r: VcpuResult) => void;
  ready!: Promise<void>;

  constructor(readonly h: VcpuHandle) {
    this.run8 = viewOf(h.runPtr, h.runSize);
    this.done = new Promise((res) => (this.resolveDone = res));
  }

  finish(r: VcpuResult): void {
    if (this.result) return;
    this.result = r;
    void this.worker?.terminate();
    this.resolveDone(r);
  }

  kick(): void {
    Atomics.store(this.control, CTL_STOP, 1);
    this.run8[RUN.immediateExit] = 1;
    const tid = Atomics.load(this.control, CTL_TID);
    if (tid > 0 && !this.result) {
      try {
        tgkill(getpid(), tid, SIGUSR2);
      } catch {
        // the thread already exited
      }
    }
  }
}

/** The VM's vCPU worker threads: start, forward their platform events, stop (kick) and collect. */
export class VcpuSet {
  private readonly threads: VcpuThread[];

  constructor(
    vcpus: VcpuHandle[],
    private readonly interrupts: InterruptsDescriptor,
    private readonly model: ModelRef,
    private readonly onEvent: (event: PlatformEvent, vcpu: number) => void,
    private readonly onStop: (r: VcpuResult) => void,
  ) {
    this.threads = vcpus.map((h) => new VcpuThread(h));
  }

  /** Starts every worker; resolves when each has built its model and entered its run loop. */
  async start(): Promise<void> {
    installKickHandler();
    await Promise.all(this.threads.map((t) => this.startOne(t)));
  }

  private startOne(t: VcpuThread): Promise<void> {
    const data: VcpuWorkerData = {
      id: t.h.id,
      fd: t.h.fd,
      runPtr: t.h.runPtr,
      runSize: t.h.runSize,
      control: t.control,
      interrupts: this.interrupts,
      model: this.model,
    };
    const w = startTsWorker(moduleUrl('vmm/vcpu/worker'), data, `vcpu${t.h.id}`);
    t.worker = w;
    return new Promise<void>((resolve) => {
      w.on('message', (m: VcpuWorkerMessage) => {
        switch (m.type) {
          case 'ready':
            resolve();
            break;
          case 'event':
            this.onEvent(m.event, m.id);
            break;
          case 'exit':
            t.finish({ id: m.id, stop: m.stop, exits: m.exits, runMs: m.runMs });
            this.onStop(t.result!);
            resolve();
            break;
          case 'failed':
            t.finish({ id: m.id, stop: { kind: 'worker-failed', message: m.message }, exits: 0 });
            this.onStop(t.result!);
            resolve();
            break;
        }
      });
      w.on('error', (e) => {
        log.error({ err: e, vcpu: t.h.id }, 'vCPU worker error');
        t.finish({ id: t.h.id, stop: { kind: 'worker-failed', message: e.message }, exits: 0 });
        this.onStop(t.result!);
        resolve();
      });
      w.on('exit', (code) => {
        if (!t.result) {
          t.finish({ id: t.h.id, stop: { kind: 'worker-failed', message: `worker exited with code ${code}` }, exits: 0 });
          this.onStop(t.result!);
        }
        resolve();
      });
    });
  }

  /** Kicks every vCPU out of KVM_RUN and waits for all workers to finish. */
  async stopAll(): Promise<VcpuResult[]> {
    for (const t of this.threads) t.kick();
    // A kick can race a worker that is between its tid store and KVM_RUN; immediate_exit covers that,
    // and re-kicking covers a signal that landed before the thread blocked.
    const timer = setInterval(() => this.threads.forEach((t) => t.kick()), 20);
    try {
      return await Promise.all(this.threads.map((t) => t.done));
    } finally {
      clearInterval(timer);
    }
  }

  results(): Promise<VcpuResult[]> {
    return Promise.all(this.threads.map((t) => t.done));
  }

  get count(): number {
    return this.threads.length;
  }
}
