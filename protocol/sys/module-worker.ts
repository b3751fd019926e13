import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Starts a worker thread on a module: compiled JavaScript is loaded directly, TypeScript (running through tsx)
 * through an eval bootstrap that registers tsx first, since Node 20 workers cannot take `--import tsx` in execArgv
 * (nodejs/node#47747). A failure to load reaches the worker's 'error' event.
 */
export function startModuleWorker(moduleUrl: URL, options: WorkerOptions = {}): Worker {
  if (!moduleUrl.pathname.endsWith('.ts')) return new Worker(moduleUrl, options);
  const tsx = import.meta.resolve('tsx/esm/api');
  const src =
    `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(moduleUrl.href)}); })` +
    `.catch((e) => { process.nextTick(() => { throw e; }); });`;
  return new Worker(src, { ...options, eval: true });
}

/** The URL of module `name` beside the caller, with the caller's own extension (`.ts` under tsx, `.js` in dist/). */
export function siblingModuleUrl(callerUrl: string, name: string): URL {
  return new URL(`./${name}.${callerUrl.endsWith('.ts') ? 'ts' : 'js'}`, callerUrl);
}
