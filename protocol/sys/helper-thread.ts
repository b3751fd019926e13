// What the copy and signal helpers share: a worker thread that serves one owner thread through shared memory.
import { performance } from 'node:perf_hooks';
import type { Worker } from 'node:worker_threads';
import { markStartupDone, siblingModuleUrl, startModuleWorker } from './module-worker.js';
import { schedYield, setThreadName } from './proc.js';

/** A helper's state word: starting, then running once it takes work, exited once it will touch nothing more. */
export const STATE_STARTING = 0;
export const STATE_RUNNING = 1;
export const STATE_EXITED = 2;

/** Starts helper module `name` (beside this one) on `data`; ctl[state] is its state word. */
export function startHelperThread(name: string, data: unknown, threadName: string, ctl: Int32Array, state: number): Worker {
  const w = startModuleWorker(siblingModuleUrl(import.meta.url, name), { workerData: data, name: threadName });
  // The owner may never return to its event loop (a blocking epoll loop): nothing may depend on these events. The
  // exit event only spares awaitHelperExit its wait for a thread that never came up (when the owner's loop runs).
  w.unref();
  w.on('error', () => undefined);
  w.on('exit', () => {
    Atomics.store(ctl, state, STATE_EXITED);
    Atomics.notify(ctl, state);
  });
  return w;
}

/** In the helper: names its thread, marks ctl[state] running, serves, and marks it exited however serving ends. */
export function runHelper(ctl: Int32Array, state: number, threadName: string, serve: () => void): void {
  try {
    setThreadName(threadName); // else it keeps its creator's name (ps, /proc/PID/task/*/comm)
  } catch {
    // cosmetic
  }
  markStartupDone();
  try {
    Atomics.store(ctl, state, STATE_RUNNING);
    serve();
  } finally {
    Atomics.store(ctl, state, STATE_EXITED);
  }
}

/**
 * Waits up to `ms` for a helper told to stop to exit; false if it did not. One still starting is waited for too: it
 * is loading native code (koffi), and Node aborts the whole process (napi_throw fails) when the thread that owns it
 * ends, or the process exits, during that load.
 */
export function awaitHelperExit(ctl: Int32Array, state: number, ms: number): boolean {
  const until = Date.now() + ms;
  for (let s = Atomics.load(ctl, state); s !== STATE_EXITED; s = Atomics.load(ctl, state)) {
    if (Date.now() >= until) return false;
    Atomics.wait(ctl, state, s, 1);
  }
  return true;
}

/** Where a helper thread's owner posts work (`count`), and the helper says it sleeps and is told to stop. */
export interface IdleWords {
  ctl: Int32Array;
  count: number;
  sleeping: number;
  stop: number;
}

/**
 * A helper thread waiting for work past `seen` (ctl[count] moving): polls, yielding the CPU, for `spinMs`, then sleeps
 * on ctl[count] with ctl[sleeping] set, so that an owner posting work after it looked notifies it. Returns ctl[count].
 */
export function waitForWork(w: IdleWords, seen: number, spinMs: number): number {
  const { ctl } = w;
  const deadline = performance.now() + spinMs;
  let now = Atomics.load(ctl, w.count);
  while (now === seen && performance.now() < deadline) {
    schedYield();
    now = Atomics.load(ctl, w.count);
  }
  if (now !== seen) return now;
  Atomics.store(ctl, w.sleeping, 1);
  if (Atomics.load(ctl, w.count) === seen && Atomics.load(ctl, w.stop) === 0) Atomics.wait(ctl, w.count, seen);
  Atomics.store(ctl, w.sleeping, 0);
  return Atomics.load(ctl, w.count);
}
