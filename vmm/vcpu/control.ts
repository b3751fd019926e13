// Per-vCPU control block shared between the main thread and the vCPU worker (Int32 words).
export const CTL_TID = 0;
export const CTL_STOP = 1;
export const CTL_STATE = 2;
export const CTL_WORDS = 4;

export const STATE_STARTING = 0;
export const STATE_RUNNING = 1;
export const STATE_EXITED = 2;

export function newControl(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4));
}
