/** The shared memory between a thread and its signal helper (signal-helper.ts). */
import { isConfinement, type HelperConfinement } from './helper-thread.js';

/** Signals handed over (written by the owner). */
export const SIG_SEQ = 0;
/** Signals the helper took (it read their fd; their slots are free). */
export const SIG_CLAIMED = 1;
/** Signals whose eventfd write finished: an fd is safe to close once this reaches the owner's count. */
export const SIG_WRITTEN = 2;
/** 1 while the helper sleeps on SIG_SEQ (Atomics.wait). */
export const SIG_SLEEPING = 3;
export const SIG_STOP = 4;
/** The helper's state (helper-thread.ts STATE_*). */
export const SIG_STATE = 5;
/** The ring of eventfds to write starts here. */
export const SIG_RING = 8;
export const SIG_ENTRIES = 64;

export interface SignalHelperShared {
  ctl: SharedArrayBuffer;
  spinUs: number;
  confine: HelperConfinement;
}

export function isSignalHelperShared(v: unknown): v is SignalHelperShared {
  return typeof v === 'object' && v !== null && (v as SignalHelperShared).ctl instanceof SharedArrayBuffer &&
    typeof (v as SignalHelperShared).spinUs === 'number' && isConfinement((v as SignalHelperShared).confine);
}
