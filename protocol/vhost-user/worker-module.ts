import { fileURLToPath } from 'node:url';
import { siblingModuleUrl } from '../sys/module-worker.js';

/**
 * The path of a backend's queue-worker module next to the caller, with the caller's own extension:
 * `.ts` when running through tsx, `.js` when running the compiled dist/ build.
 */
export function siblingWorkerModule(callerUrl: string, name: string): string {
  return fileURLToPath(siblingModuleUrl(callerUrl, name));
}
