import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { awaitStartups, startupsPending, startModuleWorker } from '../../protocol/sys/module-worker.js';

const NATIVE = new URL('./fixtures/native-worker.ts', import.meta.url);
const CHILD = fileURLToPath(new URL('./fixtures/exit-while-loading.ts', import.meta.url));

describe('startModuleWorker', () => {
  it('knows when a worker is done starting', async () => {
    const w = startModuleWorker(NATIVE, { workerData: { declareMs: 20 } });
    try {
      expect(startupsPending()).toBeGreaterThanOrEqual(1);
      expect(awaitStartups(15_000)).toBe(true);
      expect(startupsPending()).toBe(0);
    } finally {
      await w.terminate();
    }
  });

  it('an exit waits for workers still starting: ending one inside a koffi declaration aborts the process', () => {
    // process.exit() ends every worker; one ended inside koffi's init or a lib.func() declaration took the process
    // down with SIGABRT ("FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw", exit 134). Exits at once,
    // while the worker loads, and while it declares.
    for (const ms of [0, 10, 20, 30, 45, 60, 80]) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD, String(ms)], { encoding: 'utf8', timeout: 30_000 });
      const what = `exit after ${ms} ms: ${r.stderr.slice(0, 2000)}`;
      expect(r.signal, what).toBeNull();
      expect(r.status, what).toBe(0);
      expect(r.stdout.trim(), what).toBe('pending=0');
    }
  });
});
