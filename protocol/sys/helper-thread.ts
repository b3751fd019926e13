// What the copy and signal helpers share: a worker thread that serves one owner thread through shared memory.
import { performance } from 'node:perf_hooks';
import type { Worker } from 'node:worker_threads';
import { markStartupDone, siblingModuleUrl, startModuleWorker } from './module-worker.js';
import { schedYield, setThreadName } from './proc.js';
import { restrictThreadCaps } from './caps.js';
import { restrictThreadSyscalls, SECCOMP_ACTIONS, type SeccompAction } from './seccomp.js';
import type { SyscallName } from './syscalls-x86_64.js';

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

/**
 * What a confined helper (the signal helper) may call: its eventfd writes, waiting for work, and what Node does on an
 * idle worker thread and when it ends one. Its teardown was seen to call mmap, munmap, mprotect and madvise; its
 * loop's fds (read, close, epoll) are allowed too, since a call outside the list under --seccomp=kill ends the daemon.
 */
export const HELPER_THREAD_SYSCALLS: readonly SyscallName[] = [
  'write', 'sched_yield',
  'futex', 'futex_wait', 'futex_wake', 'clock_gettime', 'clock_getres', 'gettimeofday', 'clock_nanosleep', 'nanosleep',
  'mmap', 'munmap', 'mremap', 'mprotect', 'pkey_mprotect', 'madvise', 'brk',
  'read', 'close', 'epoll_ctl', 'epoll_wait', 'epoll_pwait', 'epoll_pwait2',
  'getpid', 'gettid', 'getcpu', 'tgkill', 'sched_getaffinity', 'getrandom', 'getrusage', 'prlimit64',
  'rt_sigprocmask', 'rt_sigreturn', 'sigaltstack', 'restart_syscall', 'exit', 'exit_group',
];

/**
 * A helper serving a sandboxed thread confines itself like it: no capabilities at all, and `seccomp` for a call
 * outside HELPER_THREAD_SYSCALLS ('none': capabilities only). null leaves it as its creator was.
 */
export type HelperConfinement = SeccompAction | null;

export function isConfinement(v: unknown): v is HelperConfinement {
  return v === null || SECCOMP_ACTIONS.includes(v as SeccompAction);
}

/**
 * In the helper: names its thread, confines it, marks ctl[state] running, serves, and marks it exited however serving
 * ends. A helper that cannot confine itself never runs: its owner then does the work itself.
 */
export function runHelper(ctl: Int32Array, state: number, threadName: string, confine: HelperConfinement, serve: () => void): void {
  try {
    setThreadName(threadName); // else it keeps its creator's name (ps, /proc/PID/task/*/comm)
  } catch {
    // cosmetic
  }
  markStartupDone();
  try {
    if (confine !== null) {
      restrictThreadCaps([]);
      restrictThreadSyscalls(HELPER_THREAD_SYSCALLS, confine);
    }
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
