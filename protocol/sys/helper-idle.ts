import { performance } from 'node:perf_hooks';
import { schedYield } from './proc.js';

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
