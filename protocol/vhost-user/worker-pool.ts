import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type { Logger } from '../log.js';
import { closeQuiet, eventfd, eventfdWrite } from '../sys/fd.js';
import { VhostUserError } from './errors.js';
import type { WorkerCommand, WorkerInit, WorkerReady, WorkerResult } from './worker-protocol.js';

/** Commands without their sequence number (the pool assigns it). */
export type Command = WorkerCommand extends infer C ? (C extends WorkerCommand ? Omit<C, 'seq'> : never) : never;

const COMMAND_TIMEOUT_MS = 10_000;

/** Spawns a worker running TypeScript (through tsx) or compiled JS, whichever this module is. */
function spawn(init: WorkerInit): Worker {
  const self = import.meta.url;
  const transfer = [init.port];
  if (self.endsWith('.ts')) {
    const entry = new URL('./queue-worker.ts', self).href;
    const tsx = import.meta.resolve('tsx/esm/api');
    // `execArgv: ['--import', 'tsx']` does not work for workers on Node 20: register tsx from an eval bootstrap.
    const code = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); })`;
    return new Worker(code, { eval: true, workerData: init, transferList: transfer });
  }
  return new Worker(new URL('./queue-worker.js', self), { workerData: init, transferList: transfer });
}

/** One queue worker thread as the main thread sees it: commands are synchronous (post, wake, wait for the ack). */
class WorkerLink {
  private seq = 0;
  private readonly ackView: Int32Array;
  exited = false;

  constructor(
    readonly index: number,
    readonly worker: Worker,
    private readonly port: MessagePort,
    readonly controlFd: number,
    ack: SharedArrayBuffer,
  ) {
    this.ackView = new Int32Array(ack);
  }

  send(cmd: Command, timeoutMs = COMMAND_TIMEOUT_MS): number | undefined {
    if (this.exited) throw new VhostUserError('queue worker has exited', { worker: this.index, op: cmd.op });
    const seq = ++this.seq;
    this.port.postMessage({ ...cmd, seq });
    eventfdWrite(this.controlFd);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const cur = Atomics.load(this.ackView, 0);
      if (cur === seq) break;
      const left = deadline - Date.now();
      if (left <= 0) throw new VhostUserError('queue worker did not answer', { worker: this.index, op: cmd.op, timeoutMs });
      Atomics.wait(this.ackView, 0, cur, left);
    }
    for (;;) {
      const m = receiveMessageOnPort(this.port);
      if (m === undefined) throw new VhostUserError('queue worker acked without a result', { worker: this.index, op: cmd.op });
      const r = m.message as WorkerResult;
      if (r.seq !== seq) continue;
      if (!r.ok) throw new VhostUserError(`queue worker refused ${cmd.op}: ${r.error}`, { worker: this.index, op: cmd.op });
      return r.value;
    }
  }
}

export interface PoolOptions {
  count: number;
  module: string;
  data: unknown;
  logName: string;
  log: Logger;
}

/** The daemon's queue worker threads. Ring i belongs to worker floor(i / queuesPerWorker). */
export class WorkerPool {
  private constructor(private readonly links: WorkerLink[]) {}

  static async spawn(o: PoolOptions): Promise<WorkerPool> {
    const links: WorkerLink[] = [];
    try {
      for (let i = 0; i < o.count; i++) {
        const { port1, port2 } = new MessageChannel();
        const ack = new SharedArrayBuffer(8);
        const controlFd = eventfd();
        const init: WorkerInit = { workerIndex: i, module: o.module, data: o.data, controlFd, ack, port: port2, logName: o.logName };
        const worker = spawn(init);
        const link = new WorkerLink(i, worker, port1, controlFd, ack);
        links.push(link);
        worker.on('error', (e) => o.log.error({ err: e, worker: i }, 'queue worker crashed'));
        worker.on('exit', () => {
          link.exited = true;
        });
        const ready = await new Promise<WorkerReady>((resolve, reject) => {
          worker.once('message', (m: WorkerReady) => resolve(m));
          worker.once('error', reject);
          worker.once('exit', (code) => reject(new VhostUserError('queue worker exited during start', { worker: i, code })));
        });
        if (ready.error) throw new VhostUserError(`queue worker failed to load its handler: ${ready.error}`, { worker: i, module: o.module });
      }
    } catch (e) {
      await new WorkerPool(links).close();
      throw e;
    }
    return new WorkerPool(links);
  }

  get size(): number {
    return this.links.length;
  }

  worker(i: number): WorkerLink {
    return this.links[i];
  }

  /** Sends to every worker; the first failure is thrown after all were tried. */
  broadcast(cmd: Command): void {
    let err: unknown = null;
    for (const l of this.links) {
      try {
        l.send(cmd);
      } catch (e) {
        err ??= e;
      }
    }
    if (err !== null) throw err;
  }

  async close(): Promise<void> {
    await Promise.all(
      this.links.map(async (l) => {
        if (!l.exited) {
          const gone = new Promise<void>((r) => l.worker.once('exit', () => r()));
          try {
            l.send({ op: 'exit' }, 2000);
            l.exited = true;
            await gone;
          } catch {
            await l.worker.terminate();
          }
        }
        closeQuiet(l.controlFd);
      }),
    );
  }
}

export type { WorkerLink };
