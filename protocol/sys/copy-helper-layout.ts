/**
 * The shared memory between a thread and its copy helper (copy-helper.ts): a ring of positioned vector copies
 * handed over and a ring of their results, each with one producer and one consumer.
 */
export const CTL_SQ_TAIL = 0;
export const CTL_SQ_HEAD = 1;
export const CTL_CQ_TAIL = 2;
export const CTL_CQ_HEAD = 3;
/** 1 while the helper sleeps on CTL_SQ_TAIL (Atomics.wait): whoever hands a copy over must notify it. */
export const CTL_SLEEPING = 4;
export const CTL_STOP = 5;
/** The helper's state (helper-thread.ts STATE_*). */
export const CTL_STATE = 6;
export const CTL_WORDS = 8;

/** A copy handed over: fd, iovec count, op, tag (i32) and the iovec array's address, file offset (f64). */
export const SQ_I32 = 4;
export const SQ_F64 = 2;
/** A result: tag, then bytes moved or -errno (i32). */
export const CQ_I32 = 2;

export const OP_READ = 0;
export const OP_WRITE = 1;
/** A read of cached data only (preadv2 RWF_NOWAIT): -EAGAIN, or fewer bytes, where the rest would wait for the device. */
export const OP_READ_CACHED = 2;
export type CopyOp = typeof OP_READ | typeof OP_WRITE | typeof OP_READ_CACHED;

export interface CopyHelperShared {
  ctl: SharedArrayBuffer;
  sqI32: SharedArrayBuffer;
  sqF64: SharedArrayBuffer;
  cq: SharedArrayBuffer;
  /** Ring entries, a power of two. */
  entries: number;
  /** Written after each burst of results, so that a thread asleep in epoll on it comes to reap them. */
  wakeFd: number;
  /** How long the helper polls for more work after a burst before it sleeps. */
  spinUs: number;
}

export function isCopyHelperShared(v: unknown): v is CopyHelperShared {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return o.ctl instanceof SharedArrayBuffer && o.sqI32 instanceof SharedArrayBuffer && o.sqF64 instanceof SharedArrayBuffer &&
    o.cq instanceof SharedArrayBuffer && typeof o.entries === 'number' && typeof o.wakeFd === 'number' && typeof o.spinUs === 'number';
}
