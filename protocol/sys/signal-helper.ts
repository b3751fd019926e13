import type { Worker } from 'node:worker_threads';
import {
  SIG_CLAIMED, SIG_ENTRIES, SIG_RING, SIG_SEQ, SIG_SLEEPING, SIG_STATE, SIG_STOP, SIG_WRITTEN, type SignalHelperShared,
} from './signal-helper-layout.js';
import { STATE_EXITED, STATE_RUNNING, awaitHelperExit, startHelperThread, type HelperConfinement } from './helper-thread.js';
import { schedYield } from './proc.js';

const EXIT_WAIT_MS = 5000;

/**
 * A second thread that writes a thread's interrupt eventfds (a ring's call fd) for it. Waking a driver that sleeps
 * on one costs the writer an IPI (about a fifth of a virtio-fs request thread's time at depth 8 here); handed over
 * through shared memory to a thread that polls, it costs the owner no syscall. While the helper sleeps (idle
 * `spinUs` after its last signal) the owner writes the fd itself, which is cheaper than waking the helper to do it,
 * and wakes the helper for the signals to come.
 */
export class SignalHelper {
  private readonly ctl = new Int32Array(new SharedArrayBuffer(4 * (SIG_RING + SIG_ENTRIES)));
  private seq = 0;
  private lastFd = -1;
  private readonly worker: Worker;

  /** `confine`: see HelperConfinement (a sandboxed owner's helper drops what the owner dropped). */
  constructor(spinUs: number, confine: HelperConfinement = null) {
    const shared: SignalHelperShared = { ctl: this.ctl.buffer as SharedArrayBuffer, spinUs, confine };
    this.worker = startHelperThread('signal-helper-thread', shared, 'kumo-signal', this.ctl, SIG_STATE);
  }

  get ready(): boolean {
    return Atomics.load(this.ctl, SIG_STATE) === STATE_RUNNING;
  }

  /** The thread ended (or never came up): it touches nothing more. */
  get exited(): boolean {
    return Atomics.load(this.ctl, SIG_STATE) === STATE_EXITED;
  }

  /**
   * Has `fd` written after what the caller published so far; false when the caller must write it itself (the helper
   * is not running, sleeps, or is too far behind).
   */
  signal(fd: number): boolean {
    const ctl = this.ctl;
    if (Atomics.load(ctl, SIG_STATE) !== STATE_RUNNING) return false;
    if (Atomics.load(ctl, SIG_SLEEPING) !== 0) {
      Atomics.notify(ctl, SIG_SEQ);
      return false;
    }
    const claimed = Atomics.load(ctl, SIG_CLAIMED);
    // The last signal handed over is still unclaimed: its write is yet to begin, so it covers this one too.
    if (fd === this.lastFd && claimed !== this.seq) return true;
    if (((this.seq - claimed) | 0) >= SIG_ENTRIES) return false;
    ctl[SIG_RING + (this.seq & (SIG_ENTRIES - 1))] = fd;
    this.seq = (this.seq + 1) | 0;
    this.lastFd = fd;
    // Both seq_cst: the helper stores SLEEPING before its last look at SEQ, so one of the two sees the other.
    Atomics.store(ctl, SIG_SEQ, this.seq);
    if (Atomics.load(ctl, SIG_SLEEPING) !== 0) Atomics.notify(ctl, SIG_SEQ);
    return true;
  }

  /** Waits until every signal handed over was written: call before closing an fd that was handed over. */
  flush(): void {
    while (Atomics.load(this.ctl, SIG_WRITTEN) !== this.seq && Atomics.load(this.ctl, SIG_STATE) === STATE_RUNNING) schedYield();
  }

  /** Stops the thread once it wrote what it was handed; false if it did not stop within EXIT_WAIT_MS. */
  close(): boolean {
    this.flush();
    Atomics.store(this.ctl, SIG_STOP, 1);
    Atomics.notify(this.ctl, SIG_SEQ);
    return awaitHelperExit(this.ctl, SIG_STATE, EXIT_WAIT_MS);
  }
}
