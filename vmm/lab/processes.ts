import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

/** Every child the lab started and has not reaped yet; killed on exit and on SIGINT/SIGTERM. */
const live = new Set<ChildProcess>();
/** Synchronous clean-ups (temp dirs) that must also run when a signal ends the process. */
const cleanups = new Set<() => void>();
let hooked = false;

function killAll(): void {
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const f of cleanups) {
    try {
      f();
    } catch {
      /* best effort while exiting */
    }
  }
  cleanups.clear();
}

/** Registers `fn` to run on exit or SIGINT/SIGTERM; returns the function that unregisters it. */
export function onCleanup(fn: () => void): () => void {
  hook();
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

function onSignal(sig: NodeJS.Signals): void {
  killAll();
  // If nobody else handles the signal, behave as if we had not hooked it.
  if (process.listenerCount(sig) === 1) {
    process.removeListener(sig, onSignal);
    process.kill(process.pid, sig);
  }
}

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAll);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

/**
 * Spawns a helper process that cannot outlive us: tracked for exit/signal cleanup, and started
 * through `setpriv --pdeathsig SIGKILL` so that even a SIGKILLed parent takes it down.
 */
export function spawnOwned(cmd: string, args: string[], opts: SpawnOptions): ChildProcess {
  hook();
  const child = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', cmd, ...args], opts);
  live.add(child);
  child.once('exit', () => live.delete(child));
  child.once('error', () => live.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export function stop(child: ChildProcess, graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
