import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { awaitNativeLoads, nativeLoadsPending, startModuleWorker } from '../../protocol/sys/module-worker.js';

const NATIVE = new URL('./fixtures/native-worker.ts', import.meta.url);
const CHILD = fileURLToPath(new URL('./fixtures/exit-while-loading.ts', import.meta.url));

describe('startModuleWorker', () => {
  it('knows when a worker has loaded koffi', async () => {
    const w = startModuleWorker(NATIVE, { workerData: { x: 1 } });
    try {
      expect(nativeLoadsPending()).toBeGreaterThanOrEqual(1);
      expect(awaitNativeLoads(15_000)).toBe(true);
      expect(nativeLoadsPending()).toBe(0);
    } finally {
      await w.terminate();
    }
  });

  it('an exit waits for workers still loading koffi: Node would abort the process otherwise', () => {
    // process.exit() ends every worker; one ended inside koffi's init took the process down with SIGABRT ("FATAL
    // ERROR: Error::ThrowAsJavaScriptException napi_throw", exit 134). Exits at once and across the load window.
    for (const ms of [0, 5, 10, 15, 20, 25, 30, 40]) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD, String(ms)], { encoding: 'utf8', timeout: 30_000 });
      const what = `exit after ${ms} ms: ${r.stderr.slice(0, 2000)}`;
      expect(r.signal, what).toBeNull();
      expect(r.status, what).toBe(0);
      expect(r.stdout.trim(), what).toBe('pending=0');
    }
  });
});
