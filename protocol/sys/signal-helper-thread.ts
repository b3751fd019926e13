// The signal helper's thread (see SignalHelper): writes the eventfds handed over, in order.
import { workerData } from 'node:worker_threads';
import { eventfdWrite } from './fd.js';
import { runHelper, waitForWork } from './helper-thread.js';
import {
  SIG_CLAIMED, SIG_ENTRIES, SIG_RING, SIG_SEQ, SIG_SLEEPING, SIG_STATE, SIG_STOP, SIG_WRITTEN, isSignalHelperShared,
} from './signal-helper-layout.js';

if (!isSignalHelperShared(workerData)) throw new TypeError('signal helper: bad worker data');
const ctl = new Int32Array(workerData.ctl);
const spinMs = workerData.spinUs / 1000;
const idleWords = { ctl, count: SIG_SEQ, sleeping: SIG_SLEEPING, stop: SIG_STOP };

function serve(): void {
  let done = Atomics.load(ctl, SIG_CLAIMED);
  for (;;) {
    if (Atomics.load(ctl, SIG_STOP) !== 0) return;
    const seq = Atomics.load(ctl, SIG_SEQ);
    if (seq === done) {
      waitForWork(idleWords, done, spinMs);
      continue;
    }
    while (done !== seq) {
      const fd = ctl[SIG_RING + (done & (SIG_ENTRIES - 1))];
      done = (done + 1) | 0;
      // Claimed before the write: an owner that finds a signal unclaimed may count on a write still to begin.
      Atomics.store(ctl, SIG_CLAIMED, done);
      try {
        eventfdWrite(fd);
      } catch {
        // Not an eventfd any more (the front-end's problem): the owner's own write would have failed alike.
      }
      Atomics.store(ctl, SIG_WRITTEN, done);
    }
  }
}

runHelper(ctl, SIG_STATE, 'kumo-signal', workerData.confine, serve);
