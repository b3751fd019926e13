import type { Logger } from '../log.js';
import { libc } from '../sys/libc.js';
import type { VhostUserDaemon } from './daemon.js';

/** How long the stop after an uncaught error may take before the process ends anyway. */
const FATAL_STOP_MS = 5000;
/**
 * _exit(2): ends the process whatever its threads do. Not SIGKILL to itself: the namespace sandbox's daemon is PID 1 of
 * its pid namespace, and the kernel drops a SIGKILL such a process sends itself.
 */
const exitNow = libc.func('_exit', 'void', ['int']) as (code: number) => void;

/**
 * An error nothing caught ends the process as Node would (logged, exit status 1), but only after daemon.stop() (or
 * FATAL_STOP_MS if that sticks), with _exit: a thread-pool thread blocked in accept4 or recvmsg kept Node's own exit
 * waiting for good (libuv joins its threads at exit), and the process then neither served nor ended, deaf to SIGTERM.
 */
export function stopOnUncaughtError(daemon: VhostUserDaemon, log: Logger): void {
  let failed = false;
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught error: stopping');
    if (failed) return;
    failed = true;
    setTimeout(() => exitNow(1), FATAL_STOP_MS);
    // Not process.exit(): it joins the thread pool, which a call blocked there keeps waiting for good.
    void daemon.stop().catch(() => undefined).finally(() => exitNow(1));
  });
}
