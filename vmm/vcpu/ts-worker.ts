import { Worker } from 'node:worker_threads';
import { leaveRemovedWorkingDirectory } from '../../protocol/sys/proc.js';

/**
 * Starts a worker on a TypeScript module. Node 20 + tsx cannot take `--import tsx` in execArgv
 * (nodejs/node#47747), so the worker bootstraps through an eval script that registers tsx first.
 * When the module is already JavaScript (a compiled build), it is loaded directly.
 */
export function startTsWorker(moduleUrl: URL, workerData: unknown, name: string): Worker {
  // Everything the command line named is open by now; a path a later API call gives resolves from / then.
  leaveRemovedWorkingDirectory([]);
  if (moduleUrl.pathname.endsWith('.js')) return new Worker(moduleUrl, { workerData, name });
  const src =
    `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(moduleUrl.href)}); })` +
    `.catch((e) => { process.nextTick(() => { throw e; }); });`;
  return new Worker(src, { eval: true, workerData, name });
}
