import { describe, it, expect, afterEach } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SignalHelper } from '../../protocol/sys/signal-helper.js';
import { closeQuiet, eventfd, eventfdRead } from '../../protocol/sys/fd.js';

async function until(cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('SignalHelper', () => {
  const fds: number[] = [];
  let h: SignalHelper | null = null;
  afterEach(() => {
    h?.close();
    h = null;
    for (const fd of fds.splice(0)) closeQuiet(fd);
  });

  it('writes the eventfds handed over while it polls; the owner writes itself while it sleeps', async () => {
    const a = eventfd();
    const b = eventfd();
    fds.push(a, b);
    h = new SignalHelper(1_000_000); // polls a whole second after each signal
    expect(h.signal(a)).toBe(false); // not running yet: the caller writes
    await until(() => (h as SignalHelper).ready);
    let handed = 0;
    for (let k = 0; k < 1000; k++) if (h.signal(k % 3 === 0 ? b : a)) handed++;
    expect(handed).toBeGreaterThan(0); // the rest found its ring full: written by the caller
    h.flush();
    // Every signal handed over was written, or covered by one for the same fd still pending.
    expect(eventfdRead(a)).toBeGreaterThan(0);
    expect(eventfdRead(b)).toBeGreaterThan(0);
    expect(h.close()).toBe(true);
    expect(h.signal(a)).toBe(false);
    h = null;
  });

  it('closed before its thread came up, close waits for it to end', () => {
    // A process that exits (or a thread that ends) while the helper loads koffi is aborted by Node: a queue worker
    // whose handler failed to load was terminated so, and kumo-virtiofsd died of SIGABRT instead of exiting with 1.
    h = new SignalHelper(100);
    expect(h.ready).toBe(false);
    expect(h.close()).toBe(true);
    expect(h.exited).toBe(true);
    h = null;
  });

  it('asleep, it leaves the write to the caller and wakes for the next signals; nothing is written after close', async () => {
    const a = eventfd();
    fds.push(a);
    h = new SignalHelper(100);
    await until(() => (h as SignalHelper).ready);
    await new Promise((r) => setTimeout(r, 20)); // long past its 100 µs of polling
    expect(h.signal(a)).toBe(false);
    // Woken by the refused one, it takes signals again (within its 100 µs of polling: no await in between).
    const end = Date.now() + 2000;
    let taken = false;
    while (!taken && Date.now() < end) taken = h.signal(a);
    expect(taken).toBe(true);
    h.flush();
    expect(eventfdRead(a)).toBe(1);
    expect(h.close()).toBe(true);
    await new Promise((r) => setTimeout(r, 10));
    expect(eventfdRead(a)).toBe(0);
    h = null;
  });
});

describe('a confined SignalHelper (the one beside kumo-virtiofsd\'s sandboxed request thread)', () => {
  it('has no capabilities and a syscall filter, works, and ends without a call outside its list', () => {
    // With `kill`, a call outside HELPER_THREAD_SYSCALLS while it serves, stops or is torn down kills the child.
    const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./fixtures/confined-helper-child.ts', import.meta.url))],
      { encoding: 'utf8', timeout: 60_000 });
    const diag = `status ${r.status} signal ${r.signal}\n${r.stdout}\n${r.stderr}`;
    expect(r.signal, diag).toBeNull();
    expect(r.stdout.split('\n').filter((l) => l !== ''), diag).toEqual([
      'CapEff: 0000000000000000', 'Seccomp: 2', 'handed some written yes', 'torn down', 'done',
    ]);
    expect(r.status).toBe(0);
  }, 60_000);
});
