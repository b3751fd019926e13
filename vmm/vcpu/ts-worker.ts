import type { Worker } from 'node:worker_threads';
import { leaveRemovedWorkingDirectory } from '../../protocol/sys/proc.js';
import { startModuleWorker } from '../../protocol/sys/module-worker.js';

/** Starts a worker on a TypeScript or compiled module (see startModuleWorker), named `name`. */
export function startTsWorker(moduleUrl: URL, workerData: unknown, name: string): Worker {
  // Everything the command line named is open by now; a path a later API call gives resolves from / then.
  leaveRemovedWorkingDirectory([]);
  return startModuleWorker(moduleUrl, { workerData, name });
}
