import { writeSync } from 'node:fs';
import { Worker, isMainThread, workerData, type WorkerOptions } from 'node:worker_threads';

/** The workerData key under which a worker started here finds the word it sets once its start-up is done. */
const STARTED_KEY = '__kumoStarted';
/** The longest an exit waits for workers still starting. */
const EXIT_WAIT_MS = 3000;
/** Workers started by this thread that are still starting: the word they set once they are done, and their name. */
const starting = new Map<Worker, { word: Int32Array; name: string }>();
let exitHook = false;

/**
 * Starts a worker thread on a module: compiled JavaScript is loaded directly, TypeScript (running through tsx)
 * through an eval bootstrap that registers tsx first, since Node 20 workers cannot take `--import tsx` in execArgv
 * (nodejs/node#47747). A failure to load reaches the worker's 'error' event.
 *
 * Node aborts the whole process (a fatal napi_throw) when a thread is ended inside koffi's init or one of its
 * declarations (koffi.load, lib.func: what protocol/sys modules do as they load), and process.exit() ends every
 * worker. So a worker on object workerData says, through a word added there, when its start-up is done
 * (markStartupDone: modules and handlers loaded; koffi calls are safe to end), and this thread's exit waits for that.
 */
export function startModuleWorker(moduleUrl: URL, options: WorkerOptions = {}): Worker {
  // Only a plain object can take the word: an array, a typed array or a SharedArrayBuffer reaches the worker as is.
  let opts = options;
  let word: Int32Array | null = null;
  if (isPlainObject(options.workerData)) {
    word = new Int32Array(new SharedArrayBuffer(4));
    opts = { ...options, workerData: { ...options.workerData, [STARTED_KEY]: word.buffer } };
  }
  let w: Worker;
  if (!moduleUrl.pathname.endsWith('.ts')) {
    w = new Worker(moduleUrl, opts);
  } else {
    const tsx = import.meta.resolve('tsx/esm/api');
    const src =
      `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(moduleUrl.href)}); })` +
      `.catch((e) => { process.nextTick(() => { throw e; }); });`;
    w = new Worker(src, { ...opts, eval: true });
  }
  if (word !== null) track(w, word, options.name ?? moduleUrl.pathname);
  return w;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === Object.prototype;
}

function track(w: Worker, word: Int32Array, name: string): void {
  // A thread that never returns to its event loop (a queue worker) sees no 'exit' event: entries also go once started.
  for (const [other, t] of starting) if (Atomics.load(t.word, 0) !== 0) starting.delete(other);
  starting.set(w, { word, name });
  w.once('exit', () => starting.delete(w));
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    if (awaitStartups(EXIT_WAIT_MS)) return;
    const late = [...starting.values()].filter((t) => Atomics.load(t.word, 0) === 0).map((t) => t.name);
    // Sync: the process ends right after. A worker that never calls markStartupDone costs every exit this wait.
    writeSync(2, `exit: waited ${EXIT_WAIT_MS} ms for workers that did not say their start-up was done: ${late.join(', ')}\n`);
  });
}

/** How many workers started by this thread (and still running, as far as its event loop saw) are still starting. */
export function startupsPending(): number {
  let n = 0;
  for (const { word } of starting.values()) if (Atomics.load(word, 0) === 0) n++;
  return n;
}

/** Waits up to `ms` for the workers this thread started to be done starting; false if some were not. */
export function awaitStartups(ms: number): boolean {
  const until = Date.now() + ms;
  for (const { word } of starting.values()) {
    while (Atomics.load(word, 0) === 0) {
      const left = until - Date.now();
      if (left <= 0) return false;
      Atomics.wait(word, 0, 0, Math.min(left, 5));
    }
  }
  return true;
}

/**
 * In a worker: says its start-up is done, every module it needs loaded, so that ending it can no longer abort the
 * process (see startModuleWorker). Call it once loading is over, whether it succeeded or not.
 */
export function markStartupDone(): void {
  if (isMainThread || typeof workerData !== 'object' || workerData === null) return;
  const buf = (workerData as Record<string, unknown>)[STARTED_KEY];
  if (!(buf instanceof SharedArrayBuffer)) return;
  const word = new Int32Array(buf);
  Atomics.store(word, 0, 1);
  Atomics.notify(word, 0);
}

/** The URL of module `name` beside the caller, with the caller's own extension (`.ts` under tsx, `.js` in dist/). */
export function siblingModuleUrl(callerUrl: string, name: string): URL {
  return new URL(`./${name}.${callerUrl.endsWith('.ts') ? 'ts' : 'js'}`, callerUrl);
}
