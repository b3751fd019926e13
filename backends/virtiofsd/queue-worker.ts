import type { CreateQueueHandler, QueueHandler, VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { HANDLER_TOKEN_BASE } from '../../protocol/vhost-user/backend-types.js';
import { ChainError, RingMemoryError, type ChainReach } from '../../protocol/virtqueue/index.js';
import type { GuestMemory } from '../../protocol/memory/index.js';
import { InHeader, IN_HEADER_SIZE, OutHeader, OUT_HEADER_SIZE } from '../../protocol/fuse/index.js';
import { E } from './errors.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { EPOLLIN } from '../../protocol/sys/epoll.js';
import { schedYield } from '../../protocol/sys/proc.js';
import { ChainIo } from './fuse-io.js';
import { PassthroughFs } from './passthrough.js';
import { FuseServer, MAX_IOV } from './server.js';
import { IoOffload } from './io-offload.js';
import { DEFERRED } from './deferred.js';
import { LockWaits } from './lock-waits.js';
import { enterSandbox } from './sandbox.js';
import type { FsOptions } from './options.js';
import { REQUEST_THREAD_SYSCALLS } from './seccomp-policy.js';
import { WarnLimiter } from '../../protocol/log.js';
import { restrictThreadSyscalls, type SeccompAction } from '../../protocol/sys/seccomp.js';
import { CAP_NAMES, restrictThreadCaps } from '../../protocol/sys/caps.js';

export interface FsWorkerData {
  opts: FsOptions;
  /**
   * --thread-pool-size: 0 keeps every READ on this thread; N > 0 caps the io_uring worker threads that
   * copy large READs; null (not given) allows one per CPU beside this thread.
   */
  threadPoolSize: number | null;
  /** Busy-poll the rings this long (µs) after the last request before sleeping on the kick fds; 0: never. */
  pollUs: number;
  /** --seccomp: what a syscall outside REQUEST_THREAD_SYSCALLS does once this thread serves requests. */
  seccomp: SeccompAction;
  /** Capabilities this thread keeps once it serves requests (numbers, see requestThreadCaps); null keeps all it has. */
  capabilities: number[] | null;
}

/** After this long serving without a break the loop yields to the worker's epoll (control commands). */
const SLICE_MS = 2;
const RESUME_TOKEN = HANDLER_TOKEN_BASE + 1;
const OFFLOAD_TOKEN = HANDLER_TOKEN_BASE + 2;
const LOCK_TIMER_TOKEN = HANDLER_TOKEN_BASE + 3;

/**
 * One worker thread serves both the hiprio queue and the request queue, so FORGETs on queue 0 and
 * LOOKUPs on queue 1 share one inode table. Requests run to completion in ring order.
 *
 * With EVENT_IDX each reply is published as soon as it is written: the driver is woken by the first
 * one (used_event makes the later ones silent until it looks again) and works on it while this thread
 * serves the rest, so driver and device overlap on two CPUs instead of taking turns per batch.
 *
 * Waking a sleeping thread costs far more than serving a request, so after a batch the worker keeps
 * polling both avail rings for `pollUs` with kicks suppressed (the driver then skips its eventfd write
 * too); only when nothing arrives does it re-enable kicks and go back to epoll.
 */
export const createQueueHandler: CreateQueueHandler = (ctx) => {
  const { opts, pollUs, threadPoolSize, seccomp, capabilities } = ctx.data as FsWorkerData;
  const fs = new PassthroughFs(opts, enterSandbox(opts, ctx.log));
  const offload = threadPoolSize === 0 ? null : IoOffload.create(MAX_IOV, threadPoolSize ?? 0, ctx.log);
  if (offload !== null) ctx.epoll.add(offload.efd, EPOLLIN, OFFLOAD_TOKEN);
  const retryMs = Number(process.env.KUMO_FS_LOCK_RETRY_MS);
  const waits = new LockWaits(() => ctx.memory(), Number.isFinite(retryMs) && retryMs > 0 ? retryMs : undefined);
  ctx.epoll.add(waits.timerFd, EPOLLIN, LOCK_TIMER_TOKEN);
  const server = new FuseServer(fs, offload, waits);
  const guestWarn = new WarnLimiter(ctx.log);
  const io = new ChainIo();
  const rings: VringHandle[] = [];
  const pollMs = Math.max(0, pollUs) / 1000;
  // Written when a slice ends with work left, so the epoll loop comes straight back to it.
  const resumeFd = eventfd();
  ctx.epoll.add(resumeFd, EPOLLIN, RESUME_TOKEN);
  // After the sandbox (which needs CAP_SYS_ADMIN) and before the filter (which has no capset).
  const capName = (c: number): string | number => CAP_NAMES[c] ?? c;
  let caps: (string | number)[] | null = null;
  if (capabilities !== null) {
    const kept = restrictThreadCaps(capabilities);
    caps = kept.map(capName);
    const missing = capabilities.filter((c) => !kept.includes(c)).map(capName);
    if (missing.length > 0) {
      // As virtiofsd needs them: a container that dropped them leaves requests failing with EPERM, not the start.
      const why = missing.includes('setuid') || missing.includes('setgid') ? ': creations by guest users other than root fail with EPERM' : '';
      ctx.log.warn({ missing }, `capabilities the request thread needs are not permitted (${missing.join(', ')})${why}`);
    }
  }
  // Last: everything above needs calls that serving requests never makes again.
  restrictThreadSyscalls(REQUEST_THREAD_SYSCALLS, seccomp);
  ctx.log.info({ dir: opts.sharedDir, sandbox: opts.sandbox, pollUs, seccomp, caps }, 'virtio-fs worker ready');

  /** Serves every available chain of one ring; publishes and signals once for the batch. */
  function drain(q: VringHandle): number {
    const queue = q.queue;
    const mem = ctx.memory();
    const eager = queue.eventIdx;
    let served = 0;
    for (;;) {
      let chain;
      try {
        chain = queue.pop();
      } catch (e) {
        if (e instanceof ChainError) {
          guestWarn.warn({ err: e.message }, 'dropping malformed descriptor chain');
          const len = e.reach === null ? 0 : writeEioHeader(mem, e.reach);
          if (len > 0) {
            queue.pushUsed(e.head, len);
            served++;
          } else if (queue.returnMalformed(e)) served++;
          continue;
        }
        throw e;
      }
      if (chain === null) break;
      let n = 0;
      if (offload !== null) offload.moreQueued = queue.hasAvailable();
      try {
        n = server.handle(io.reset(mem, chain.readable, chain.writable, chain.readableLength, chain.writableLength));
      } catch (e) {
        guestWarn.warn({ err: (e as Error).message }, 'request dropped');
      }
      if (n === DEFERRED) {
        server.bindDeferred(q, chain.head);
        served++;
        continue;
      }
      queue.pushUsed(chain.head, n);
      served++;
      if (eager) {
        queue.publishUsed();
        q.notify();
      }
    }
    if (served > 0) {
      queue.publishUsed();
      q.notify();
    }
    return served;
  }

  /** Set by the lock timer: waiting locks are due for another try even if no request came. */
  let lockRetryDue = false;

  /** Served chains on all rings; a ring whose avail index is corrupt is dropped (the driver broke it). */
  function drainAll(): number {
    let served = offload !== null ? offload.reap(ctx.memory()) : 0;
    for (const r of rings) {
      if (!r.enabled) continue;
      try {
        served += drain(r);
      } catch (e) {
        // Its memory was removed and may come back (see the queue worker): served again once it is mapped.
        if (e instanceof RingMemoryError) continue;
        rings.splice(rings.indexOf(r), 1);
        // A guest can break its ring again after every restart (a device reset): rate-limited.
        guestWarn.error({ err: e, ring: r.index }, 'ring is broken; no longer served');
        return served + 1;
      }
    }
    // Any request just served may have released a lock that one waits for.
    if (waits.pending > 0 && (served > 0 || lockRetryDue)) served += waits.retry();
    lockRetryDue = false;
    return served;
  }

  let kicksOff = false;
  /** Suppresses (false) or re-enables (true) kicks; re-enabling returns whether chains arrived meanwhile. */
  function setKicks(on: boolean): boolean {
    kicksOff = !on;
    let more = false;
    for (const r of rings) {
      // A ring whose memory the front-end removed for a while (REM_MEM_REG) is left alone until it is back.
      if (!r.enabled || !r.queue.ringsMapped()) continue;
      if (on) more = r.queue.enableNotifications() || more;
      else r.queue.disableNotifications();
    }
    return more;
  }

  function anyAvailable(): boolean {
    for (const r of rings) if (r.enabled && r.queue.ringsMapped() && r.queue.hasAvailable()) return true;
    return offload !== null && offload.ready();
  }

  function serve(): void {
    // A resume or timer event may still come after the last ring stopped (and the memory went with it).
    if (rings.length === 0) return;
    const sliceEnd = performance.now() + SLICE_MS;
    let idleUntil = 0;
    for (;;) {
      const served = drainAll();
      let now = performance.now();
      if (served > 0) {
        idleUntil = 0;
        if (now < sliceEnd) continue;
        // Long busy stretch: let the epoll loop run control commands, then come straight back.
        if (kicksOff) setKicks(true);
        eventfdWrite(resumeFd);
        return;
      }
      if (pollMs > 0) {
        if (idleUntil === 0) {
          idleUntil = now + pollMs;
          if (!kicksOff) setKicks(false);
        }
        // sched_yield: on a busy host the driver may be waiting for this very CPU; let it run first.
        while (now < idleUntil && !anyAvailable()) {
          schedYield();
          now = performance.now();
        }
        if (now < idleUntil) continue;
      }
      if (!kicksOff) return;
      // A chain made available just before kicks came back on would get no kick: serve it now.
      if (!setKicks(true)) return;
      idleUntil = 0;
    }
  }

  /** Waits for the READs on io-wq and returns their chains (memory about to change, ring stopping, exit). */
  function finishReads(): void {
    if (offload !== null && offload.pending > 0) offload.drain(ctx.memory());
  }

  const handler: QueueHandler = {
    onStart(q: VringHandle): void {
      if (!rings.includes(q)) rings.push(q);
      waits.resume(q);
      ctx.log.debug({ queue: q.index }, 'queue started');
    },
    onStop(q: VringHandle, byFrontEnd: boolean): void {
      finishReads();
      if (byFrontEnd) waits.suspend(q);
      else waits.cancel(q);
      const i = rings.indexOf(q);
      if (i >= 0) rings.splice(i, 1);
      ctx.log.debug({ queue: q.index }, 'queue stopped');
    },
    process(q: VringHandle): void {
      if (!q.enabled) return;
      if (!rings.includes(q)) rings.push(q);
      serve();
    },
    onFd(token: number): void {
      if (token === RESUME_TOKEN) eventfdRead(resumeFd);
      else if (token === OFFLOAD_TOKEN) eventfdRead((offload as IoOffload).efd);
      else if (token === LOCK_TIMER_TOKEN) {
        eventfdRead(waits.timerFd);
        lockRetryDue = true;
      } else return;
      serve();
    },
    drain(): void {
      finishReads();
    },
    close(): void {
      waits.cancel(null);
      ctx.epoll.remove(waits.timerFd);
      waits.close();
      if (offload === null) return;
      finishReads();
      ctx.epoll.remove(offload.efd);
      offload.close();
    },
  };
  process.once('exit', () => closeQuiet(resumeFd));
  return handler;
};

/**
 * A request refused for a buffer outside guest memory gets EIO in its reply header where that header is still guest
 * memory: an empty answer leaves the driver's header as it was (zeroed: error 0, success). Returns the bytes written.
 */
function writeEioHeader(mem: GuestMemory, reach: ChainReach): number {
  const out = reach.firstWritable;
  if (out === null || out.len < OUT_HEADER_SIZE) return 0;
  const inh = reach.firstReadable;
  const unique = inh !== null && inh.len >= IN_HEADER_SIZE ? InHeader.decode(mem.slice(inh.addr, IN_HEADER_SIZE)).unique : 0n;
  mem.write(out.addr, OutHeader.pack({ len: OUT_HEADER_SIZE, error: -E.EIO, unique }));
  return OUT_HEADER_SIZE;
}
