// The copy helper's thread (see CopyHelper): runs the copies handed over, in order, and posts their results.
import { workerData } from 'node:worker_threads';
import { eventfdWrite, preadvCachedRaw, preadvRaw, pwritevRaw } from './fd.js';
import { runHelper, waitForWork } from './helper-thread.js';
import {
  CTL_CQ_TAIL, CTL_SLEEPING, CTL_SQ_HEAD, CTL_SQ_TAIL, CTL_STATE, CTL_STOP, CQ_I32, OP_READ_CACHED, OP_WRITE, SQ_F64, SQ_I32, isCopyHelperShared,
} from './copy-helper-layout.js';

const EIO = 5;

if (!isCopyHelperShared(workerData)) throw new TypeError('copy helper: bad worker data');
const sh = workerData;
const ctl = new Int32Array(sh.ctl);
const sqI = new Int32Array(sh.sqI32);
const sqF = new Float64Array(sh.sqF64);
const cq = new Int32Array(sh.cq);
const mask = sh.entries - 1;
const spinMs = sh.spinUs / 1000;
const idleWords = { ctl, count: CTL_SQ_TAIL, sleeping: CTL_SLEEPING, stop: CTL_STOP };

function copy(k: number): number {
  const fd = sqI[k * SQ_I32];
  const count = sqI[k * SQ_I32 + 1];
  const iov = sqF[k * SQ_F64];
  const off = sqF[k * SQ_F64 + 1];
  const op = sqI[k * SQ_I32 + 2];
  try {
    if (op === OP_WRITE) return pwritevRaw(fd, iov, count, off);
    return op === OP_READ_CACHED ? preadvCachedRaw(fd, iov, count, off) : preadvRaw(fd, iov, count, off);
  } catch {
    return -EIO; // the binding itself failed: the request fails, the queue goes on
  }
}

function serve(): void {
  let head = Atomics.load(ctl, CTL_SQ_HEAD);
  let cqTail = Atomics.load(ctl, CTL_CQ_TAIL);
  let tail = head;
  for (;;) {
    if (Atomics.load(ctl, CTL_STOP) !== 0) return;
    if (tail === head) {
      tail = waitForWork(idleWords, head, spinMs);
      continue;
    }
    while (tail !== head) {
      const k = head & mask;
      const tag = sqI[k * SQ_I32 + 3];
      const res = copy(k);
      head = (head + 1) | 0;
      Atomics.store(ctl, CTL_SQ_HEAD, head);
      const c = cqTail & mask;
      cq[c * CQ_I32] = tag;
      cq[c * CQ_I32 + 1] = res;
      cqTail = (cqTail + 1) | 0;
      Atomics.store(ctl, CTL_CQ_TAIL, cqTail);
      tail = Atomics.load(ctl, CTL_SQ_TAIL);
    }
    eventfdWrite(sh.wakeFd);
  }
}

runHelper(ctl, CTL_STATE, 'kumo-copy', null, serve);
