import { readFileSync, statSync } from 'node:fs';
import { SetupError } from '../errors.js';
import { libc, check, rawSyscall } from './libc.js';

const SYS_gettid = 186;
const SYS_tgkill = 234;
const SYS_sched_yield = 24;
const PR_SET_NAME = 15;
const prctl_ = libc.func('prctl', 'int', ['int', 'str', 'ulong', 'ulong', 'ulong']);
const getpid_ = libc.func('getpid', 'int', []);

export function gettid(): number {
  return rawSyscall(SYS_gettid);
}

export function getpid(): number {
  return getpid_() as number;
}

/** Gives the CPU to another runnable thread, if any (busy-poll loops call it between looks). */
export function schedYield(): void {
  rawSyscall(SYS_sched_yield);
}

export function tgkill(tgid: number, tid: number, sig: number): void {
  check('tgkill', rawSyscall(SYS_tgkill, tgid, tid, sig), { tid, sig });
}

/** Whether thread `tid` (as gettid() gave it, in this process's pid namespace) of this process still runs. */
export function threadRuns(tid: number): boolean {
  return rawSyscall(SYS_tgkill, getpid(), tid, 0) === 0;
}

/** Names the calling thread (visible in /proc/self/task/N/comm; at most 15 bytes). */
export function setThreadName(name: string): void {
  check('prctl(PR_SET_NAME)', prctl_(PR_SET_NAME, name.slice(0, 15), 0, 0, 0) as number, { name });
}

export const SIGUSR1 = 10;
export const SIGUSR2 = 12;

/**
 * This process's pid as whoever started it sees it: the first NStgid of /proc/self/status (the pid in the namespace of
 * that procfs). Inside the pid namespace kumo-virtiofsd's supervisor makes (namespaces.ts) process.pid is 1.
 */
export function hostPid(): number {
  try {
    const m = /^NStgid:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m !== null) return Number(m[1]);
  } catch {
    // no procfs: process.pid
  }
  return process.pid;
}

/**
 * Node starts no worker thread in a working directory that was removed (its worker bootstrap calls process.cwd()),
 * so such a process moves to /. A relative path given to it would then name another file: that is refused instead.
 */
export function leaveRemovedWorkingDirectory(paths: readonly (string | undefined)[]): void {
  if (!workingDirectoryRemoved()) return;
  const relative = paths.find((p) => p !== undefined && !p.startsWith('/'));
  if (relative !== undefined) throw new SetupError(`the working directory was removed, so the relative path ${relative} names nothing; give an absolute path`);
  process.chdir('/');
}

/**
 * Not process.cwd() alone: the main thread caches it, so a directory removed after its first call still answers.
 * A removed directory has no links left (rmdir clears them); /proc/self/cwd reaches it without search permission on
 * it, '.' without /proc.
 */
function workingDirectoryRemoved(): boolean {
  for (const p of ['/proc/self/cwd', '.']) {
    try {
      return statSync(p).nlink === 0;
    } catch {
      // No /proc, or no search permission on the working directory: the next way.
    }
  }
  try {
    process.cwd();
    return false;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return true;
  }
}
