import type { Logger } from '../log.js';
import type { VhostUserDaemon } from './daemon.js';

/** How long the stop after an uncaught error may take before the process is killed. */
const FATAL_STOP_MS = 5000;

/**
 * An error nothing caught ends the process as Node would (logged, exit status 1), but only after daemon.stop(): a
 * thread-pool thread blocked in accept4 or recvmsg for the daemon keeps a plain exit waiting for good (libuv joins
 * its threads at exit), and the process then neither served nor ended, deaf to SIGTERM. stop() wakes those calls;
 * should it stick too, the process kills itself.
 */
export function stopOnUncaughtError(daemon: VhostUserDaemon, log: Logger): void {
  let failed = false;
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught error: stopping');
    if (failed) return;
    failed = true;
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), FATAL_STOP_MS).unref();
    void daemon.stop().catch(() => undefined).finally(() => process.exit(1));
  });
}
