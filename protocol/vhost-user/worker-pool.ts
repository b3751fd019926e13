import { MessageChannel, receiveMessageOnPort, type Worker, type MessagePort } from 'node:worker_threads';
import { siblingModuleUrl, startModuleWorker } from '../sys/module-worker.js';
import { SetupError } from '../errors.js';
import type { Logger } from '../log.js';
import type { SignalHelperOptions } from './backend-types.js';
import { closeQuiet, eventfd, eventfdWrite } from '../sys/fd.js';
import { threadRuns } from '../sys/proc.js';
import { VhostUserError } from './errors.js';
import type { WorkerCommand, WorkerInit, WorkerReady, WorkerResult } from './worker-protocol.js';

/** Commands without their sequence number (the pool assigns it). */
export type Command = WorkerCommand extends infer C ? (C extends WorkerCommand ? Omit<C, 'seq'> : never) : never;

/**
 * A command waits as long as the worker takes to answer: one stuck in a write the device holds up (a frozen file
 * system, a slow NFS server) answers once that completes, and a front-end dropped meanwhile would lose its disk
 * (QEMU waits for GET_VRING_BASE without limit). It says so this often, and gives up only if the thread has ended.
 */
const BUSY_WARN_MS = 10_000;

/** Spawns a worker running TypeScript (through tsx) or compiled JS, whichever this module is. */
function spawn(init: WorkerInit): Worker {
  return startModuleWorker(siblingModuleUrl(import.meta.url, 'queue-worker'), { workerData: init, transferList: [init.port] });
}

/** One queue worker thread as the main thread sees it: commands are synchronous (post, wake, wait for the ack). */
class WorkerLink {
  private seq = 0;
  private readonly ackView: Int32Array;
  /** No more commands: the worker exited or was told to. */
  exited = false;
  /** The thread has ended. */
  gone = false;

  constructor(
    readonly index: number,
    readonly worker: Worker,
    private readonly port: MessagePort,
    readonly controlFd: number,
    /** [0]: the last command answered; [1]: the worker's thread id (0 until it runs). */
    ack: SharedArrayBuffer,
    private readonly log?: Logger,
  ) {
    this.ackView = new Int32Array(ack);
  }

  /** `timeoutMs`: give up after this long (shutting down); by default wait as long as the worker takes. */
  send(cmd: Command, timeoutMs?: number): number | undefined {
    return this.result(this.post(cmd), cmd.op, deadlineOf(timeoutMs));
  }

  /**
   * Whether the worker's thread still runs. Its 'exit' event cannot be seen while this thread blocks waiting, so
   * the thread id it stored is asked after (signal 0; not /proc, which in a pid namespace of our own shows the
   * parent namespace's numbers).
   */
  private alive(): boolean {
    const tid = Atomics.load(this.ackView, 1);
    return tid <= 0 || threadRuns(tid);
  }

  /** Posts a command and wakes the worker; the answer is collected with result(). */
  post(cmd: Command): number {
    if (this.exited) throw new VhostUserError('queue worker has exited', { worker: this.index, op: cmd.op });
    const seq = ++this.seq;
    this.port.postMessage({ ...cmd, seq });
    eventfdWrite(this.controlFd);
    return seq;
  }

  /** Whether command `seq` (posted without waiting) has been answered. */
  answered(seq: number): boolean {
    return Atomics.load(this.ackView, 0) >= seq;
  }

  /** Waits (blocking) until command `seq`, posted without waiting for it, has been answered; its result is not read. */
  waitAnswered(seq: number, op: string): void {
    for (;;) {
      const cur = Atomics.load(this.ackView, 0);
      if (cur >= seq) return;
      if (!this.alive()) throw new VhostUserError('queue worker thread has ended', { worker: this.index, op });
      Atomics.wait(this.ackView, 0, cur, 1000);
    }
  }

  /** Waits (blocking, until `deadline`) for the answer to command `seq`. */
  result(seq: number, op: string, deadline: number): number | undefined {
    const start = Date.now();
    let warnAt = start + BUSY_WARN_MS;
    for (;;) {
      const cur = Atomics.load(this.ackView, 0);
      if (cur === seq) break;
      const now = Date.now();
      if (now >= deadline) throw new VhostUserError('queue worker did not answer', { worker: this.index, op });
      if (!this.alive()) throw new VhostUserError('queue worker thread has ended', { worker: this.index, op });
      if (now >= warnAt) {
        this.log?.warn({ worker: this.index, op, waitedS: Math.round((now - start) / 1000) }, 'queue worker busy; waiting for it (its requests in flight wait for the device)');
        warnAt += BUSY_WARN_MS;
      }
      Atomics.wait(this.ackView, 0, cur, Math.min(1000, deadline - now));
    }
    for (;;) {
      const m = receiveMessageOnPort(this.port);
      if (m === undefined) throw new VhostUserError('queue worker acked without a result', { worker: this.index, op });
      const r = m.message as WorkerResult;
      if (r.seq !== seq) continue;
      if (!r.ok) throw new VhostUserError(`queue worker refused ${op}: ${r.error}`, { worker: this.index, op });
      return r.value;
    }
  }

  /** Resolves once the thread has ended, or false at the deadline. */
  joined(deadline: number): Promise<boolean> {
    if (this.gone) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(this.gone), Math.max(0, deadline - Date.now()));
      this.worker.once('exit', () => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }
}

export interface PoolOptions {
  count: number;
  module: string;
  data: unknown;
  logName: string;
  signalHelper?: SignalHelperOptions;
  log: Logger;
}

/** The daemon's queue worker threads. Ring i belongs to worker floor(i / queuesPerWorker). */
export class WorkerPool {
  private constructor(
    private readonly links: WorkerLink[],
    private readonly log?: Logger,
  ) {}

  static async spawn(o: PoolOptions): Promise<WorkerPool> {
    const links: WorkerLink[] = [];
    try {
      for (let i = 0; i < o.count; i++) {
        const { port1, port2 } = new MessageChannel();
        const ack = new SharedArrayBuffer(8);
        const controlFd = eventfd();
        const init: WorkerInit = { workerIndex: i, module: o.module, data: o.data, controlFd, ack, port: port2, logName: o.logName, signalHelper: o.signalHelper ?? null };
        const worker = spawn(init);
        const link = new WorkerLink(i, worker, port1, controlFd, ack, o.log);
        links.push(link);
        worker.on('error', (e) => o.log.error({ err: e, worker: i }, 'queue worker crashed'));
        worker.on('exit', () => {
          link.exited = true;
          link.gone = true;
        });
        const ready = await new Promise<WorkerReady>((resolve, reject) => {
          worker.once('message', (m: WorkerReady) => resolve(m));
          worker.once('error', reject);
          worker.once('exit', (code) => reject(new VhostUserError('queue worker exited during start', { worker: i, code })));
        });
        if (ready.error) {
          // It answers nothing more: ending it now spares close() a wait for an exit ack that cannot come.
          link.exited = true;
          await worker.terminate();
          if (ready.setup === true) throw new SetupError(ready.error, { worker: i });
          throw new VhostUserError(`queue worker failed to load its handler: ${ready.error}`, { worker: i, module: o.module });
        }
      }
    } catch (e) {
      await new WorkerPool(links, o.log).close();
      throw e;
    }
    return new WorkerPool(links, o.log);
  }

  get size(): number {
    return this.links.length;
  }

  worker(i: number): WorkerLink {
    return this.links[i];
  }

  /**
   * Sends to every worker at once (they work in parallel) and waits for all answers; the first failure
   * is thrown after all were collected.
   */
  broadcast(cmd: Command, timeoutMs?: number): void {
    const deadline = deadlineOf(timeoutMs);
    let err: unknown = null;
    const posted: [WorkerLink, number][] = [];
    for (const l of this.links) {
      try {
        posted.push([l, l.post(cmd)]);
      } catch (e) {
        err ??= e;
      }
    }
    for (const [l, seq] of posted) {
      try {
        l.result(seq, cmd.op, deadline);
      } catch (e) {
        err ??= e;
      }
    }
    if (err !== null) throw err;
  }

  private closing: Promise<void> | null = null;

  /**
   * Tells every worker to exit (each stops its rings, closes its handler and unmaps guest memory before
   * it answers) and joins the threads, all within `timeoutMs`. A worker that does not answer in time is
   * terminated; one stuck in a native call that terminate() cannot interrupt is left behind (the caller
   * is about to exit the process). Idempotent.
   */
  close(timeoutMs = 1000): Promise<void> {
    this.closing ??= this.shutdown(timeoutMs);
    return this.closing;
  }

  private async shutdown(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const posted: [WorkerLink, number][] = [];
    for (const l of this.links) {
      if (l.exited) continue;
      try {
        posted.push([l, l.post({ op: 'exit' })]);
      } catch {
        // it exited meanwhile
      }
      l.exited = true;
    }
    const answered = new Set<WorkerLink>();
    for (const [l, seq] of posted) {
      try {
        l.result(seq, 'exit', deadline);
        answered.add(l);
      } catch (e) {
        this.log?.warn({ err: e, worker: l.index }, 'queue worker did not exit in time; terminating it');
      }
    }
    await Promise.all(
      this.links.map(async (l) => {
        if (!answered.has(l) && !l.gone) void l.worker.terminate();
        const joined = await l.joined(deadline);
        // A thread still running may still read its control eventfd: leave that fd open.
        if (joined) closeQuiet(l.controlFd);
        else this.log?.warn({ worker: l.index }, 'queue worker thread did not end in time; left behind');
      }),
    );
  }
}

function deadlineOf(timeoutMs: number | undefined): number {
  return timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
}

export type { WorkerLink };
