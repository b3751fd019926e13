/**
 * Entry point of a vhost-user queue worker thread: one blocking epoll loop over the kick eventfds of the
 * rings it owns, the handler's own fds and a control eventfd through which the main thread posts commands.
 */
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { SetupError } from '../errors.js';
import { flushHeldWarnings, logger, WarnLimiter, type Logger } from '../log.js';
import { GuestMemory, type MemoryRegionSpec } from '../memory/index.js';
import { Epoll, EPOLLERR, EPOLLHUP, EPOLLIN } from '../sys/epoll.js';
import { closeQuiet, eventfdRead, eventfdWrite, setNonBlocking } from '../sys/fd.js';
import { gettid, setThreadName } from '../sys/proc.js';
import { markStartupDone } from '../sys/module-worker.js';
import { SignalHelper } from '../sys/signal-helper.js';
import { mapFd, viewOf, type Mapping } from '../sys/mem.js';
import { DeviceQueue, DirtyLog, InflightRing, inflightRegionSize, RingDirtyLog, RingMemoryError, type QueueLayout } from '../virtqueue/index.js';
import { F_LOG_ALL } from './messages.js';
import { regionsOverlap } from './memory-table.js';
import { HANDLER_TOKEN_BASE, type CreateQueueHandler, type QueueHandler, type VringHandle } from './backend-types.js';
import { CONTROL_TOKEN, type LogSpec, type RingInflight, type RingStart, type WorkerCommand, type WorkerInit, type WorkerResult } from './worker-protocol.js';

class WorkerRing implements VringHandle {
  failed = false;
  /** Its rings' memory was found unmapped (see process()). */
  memoryMissing = false;
  /** Its kick fd hung up or failed and was taken out of epoll (see takeKick()). */
  kickDropped = false;
  /** Inflight tracking (INFLIGHT_SHMFD): the ring's region and the mapping that holds it. */
  inflight: { ring: InflightRing; map: Mapping } | null = null;
  constructor(
    readonly index: number,
    public queue: DeviceQueue,
    /** Dirty logging: kept across the queue objects a memory change makes (taken chains' buffers are in it). */
    readonly dirty: RingDirtyLog,
    public enabled: boolean,
    readonly kickFd: number,
    public callFd: number,
    readonly eventIdx: boolean,
    private readonly signals: SignalHelper | null,
  ) {}
  notify(): void {
    if (this.callFd >= 0 && this.queue.needsNotification() && this.signals?.signal(this.callFd) !== true) eventfdWrite(this.callFd);
  }

  /** Closes the call fd (once a signal helper wrote what it was handed: the number may be reused at once). */
  closeCall(): void {
    this.signals?.flush();
    closeQuiet(this.callFd);
  }
}

/**
 * Kick and call fds are eventfds a front-end made, normally non-blocking already; one that is not (or a full pipe
 * passed instead) would park this thread in read() or write() for good. A full call fd means a wakeup is pending.
 */
function nonBlocking(fd: number): void {
  if (fd >= 0) setNonBlocking(fd, true);
}

const POLL_INTERVAL_MS = 1;
/** The signal helper polls this long after its last signal before it sleeps. */
const SIGNAL_SPIN_US = 200;
/**
 * An idle worker still comes back to JS this often: Node ends a worker (process.exit() joins every one) only between
 * JS steps, and a thread parked in an unbounded epoll_wait would hold the whole process up for good.
 */
const IDLE_WAIT_MS = 500;

class QueueWorker {
  private mem: GuestMemory | null = null;
  private readonly rings = new Map<number, WorkerRing>();
  /** Rings started without a kick fd: processed on every loop turn. */
  private polled: WorkerRing[] = [];
  private readonly epoll = new Epoll(64);
  private features = 0n;
  /** SET_LOG_BASE's log, mapped here; marked only while VHOST_F_LOG_ALL is acked. */
  private dirtyLog: { log: DirtyLog; map: Mapping } | null = null;
  private running = true;
  /** Set when a handler failed to drain: mappings are then never unmapped (kept in `retired`). */
  private pinned = false;
  private shrinkNoted = false;
  private readonly retired: GuestMemory[] = [];
  private handler!: QueueHandler;
  private readonly ack: Int32Array;
  /** A front-end can hand over a broken kick fd with every SET_VRING_KICK: those lines are rate-limited. */
  private readonly peerWarn: WarnLimiter;
  private readonly signals: SignalHelper | null = null;

  constructor(
    private readonly init: WorkerInit,
    private readonly log: Logger,
  ) {
    this.peerWarn = new WarnLimiter(log);
    this.ack = new Int32Array(init.ack);
    Atomics.store(this.ack, 1, gettid()); // the main thread's liveness check (see WorkerLink)
    this.epoll.add(init.controlFd, EPOLLIN, CONTROL_TOKEN);
    if (init.signalHelper !== null) {
      // Started before the handler loads: a sandbox or seccomp filter it enters must not stand in the thread's way.
      try {
        this.signals = new SignalHelper(SIGNAL_SPIN_US, init.signalHelper.confine);
      } catch (e) {
        log.warn({ err: e }, 'no signal helper thread; the queue thread writes its call fds');
      }
    }
  }

  async load(): Promise<void> {
    const spec = this.init.module.startsWith('/') ? pathToFileURL(this.init.module).href : this.init.module;
    const mod = (await import(spec)) as { createQueueHandler?: CreateQueueHandler };
    if (typeof mod.createQueueHandler !== 'function') throw new Error(`${this.init.module} does not export createQueueHandler`);
    this.handler = mod.createQueueHandler({
      data: this.init.data,
      memory: () => {
        if (this.mem === null) throw new Error('no guest memory yet');
        return this.mem;
      },
      epoll: this.epoll,
      log: this.log,
      workerIndex: this.init.workerIndex,
      features: () => this.features,
    });
  }

  loop(): void {
    const ep = this.epoll;
    while (this.running) {
      const n = ep.wait(this.polled.length > 0 ? POLL_INTERVAL_MS : IDLE_WAIT_MS);
      for (let i = 0; i < n; i++) {
        const token = ep.tokens[i];
        if (token === CONTROL_TOKEN) {
          eventfdRead(this.init.controlFd);
          this.drainCommands();
        } else if (token < HANDLER_TOKEN_BASE) {
          const ring = this.rings.get(token);
          if (ring === undefined) continue;
          this.takeKick(ring, ep.events[i]);
          if (ring.enabled) this.process(ring);
        } else {
          this.onFd(token, ep.events[i]);
        }
      }
      for (const r of this.polled) if (r.enabled) this.process(r);
      // This thread never returns to its event loop: the held-back counts of its limiters go out from here.
      flushHeldWarnings();
    }
    this.stopSignalHelper();
    this.epoll.close();
  }

  /** Before this thread ends: Node would abort the process if the helper were still loading when it does. */
  stopSignalHelper(): void {
    if (this.signals !== null && !this.signals.close()) this.log.warn('the signal helper thread did not stop');
  }

  /**
   * Consumes a kick. An eventfd never hangs up or fails; a kick fd that does (a pipe the front-end closed, say) would
   * report so on every epoll_wait, or fail every read: it is dropped from epoll and the ring is kicked no more.
   */
  private takeKick(ring: WorkerRing, events: number): void {
    if ((events & (EPOLLERR | EPOLLHUP)) === 0) {
      try {
        eventfdRead(ring.kickFd);
        return;
      } catch {
        // a read that fails is as broken as a hang-up
      }
    }
    try {
      this.epoll.remove(ring.kickFd);
    } catch {
      // already gone
    }
    ring.kickDropped = true;
    this.peerWarn.warn({ ring: ring.index, events }, 'kick fd hung up or failed: the ring is no longer kicked');
  }

  private process(ring: WorkerRing): void {
    if (ring.failed) return;
    try {
      this.handler.process(ring);
      ring.memoryMissing = false;
    } catch (e) {
      if (e instanceof RingMemoryError) {
        // Its region was removed (REM_MEM_REG), maybe to come back (ADD_MEM_REG, as QEMU resizes memory): nothing
        // was taken from the ring, so it is served again once its memory is mapped.
        if (!ring.memoryMissing) this.log.warn({ ring: ring.index, err: e.message }, 'ring memory is not mapped; waiting for it');
        ring.memoryMissing = true;
        return;
      }
      // A handler that lets an error escape leaves the ring in an unknown state: stop serving it.
      ring.failed = true;
      // A guest can corrupt its ring, reset the device and do it again at will: rate-limited too.
      this.peerWarn.error({ err: e, ring: ring.index }, 'queue handler failed; ring stopped');
    }
  }

  private onFd(token: number, events: number): void {
    try {
      this.handler.onFd?.(token, events);
    } catch (e) {
      // Same policy as process(): the rings this handler serves are in an unknown state.
      for (const r of this.rings.values()) r.failed = true;
      this.log.error({ err: e, token }, 'queue handler fd callback failed; rings stopped');
    }
  }

  /**
   * Before the guest memory changes: no request may still be in flight in the old mapping (io_uring
   * would read or write unmapped memory, or a new mapping at the same address), and used entries pushed
   * on the old queue objects must be published before those objects are replaced.
   */
  private quiesce(): void {
    if (this.rings.size === 0) return;
    try {
      this.handler.drain?.();
    } catch (e) {
      // In-flight I/O may still point into the current mappings: never unmap them, stop serving.
      this.pinned = true;
      for (const r of this.rings.values()) r.failed = true;
      this.log.error({ err: e }, 'queue handler drain failed; rings stopped, old memory kept mapped');
    }
    for (const r of this.rings.values()) {
      if (r.failed) continue;
      try {
        r.queue.publishUsed();
        r.notify();
      } catch (e) {
        r.failed = true;
        this.log.error({ err: e, ring: r.index }, 'publishing before a memory change failed; ring stopped');
      }
    }
  }

  /** After a memory change: serve what the driver made available meanwhile (kicks may have been off). */
  private resume(): void {
    for (const r of this.rings.values()) if (r.enabled) this.process(r);
  }

  /** Unmaps a memory table, unless a failed drain left I/O that may still use it. */
  private release(mem: GuestMemory | null): void {
    if (mem === null) return;
    if (this.pinned) this.retired.push(mem);
    else mem.close();
  }

  /** Commands taken from the port ahead of their turn (see applyEarlyAdds); `done`: an addRegion applied already. */
  private readonly stash: { cmd: WorkerCommand; done: boolean; error?: string }[] = [];

  private drainCommands(): void {
    for (;;) {
      let cmd: WorkerCommand;
      let early: { done: boolean; error?: string } | null = null;
      const s = this.stash.shift();
      if (s !== undefined) {
        cmd = s.cmd;
        if (s.done) early = s;
      } else {
        const m = receiveMessageOnPort(this.init.port);
        if (m === undefined) return;
        cmd = m.message as WorkerCommand;
      }
      let res: WorkerResult;
      if (early !== null) {
        res = early.error === undefined ? { seq: cmd.seq, ok: true, value: undefined } : { seq: cmd.seq, ok: false, error: early.error };
      } else {
        try {
          res = { seq: cmd.seq, ok: true, value: this.apply(cmd) };
        } catch (e) {
          this.log.error({ err: e, op: cmd.op }, 'worker command failed');
          res = { seq: cmd.seq, ok: false, error: e instanceof Error ? e.message : String(e) };
        }
      }
      this.init.port.postMessage(res);
      Atomics.store(this.ack, 0, cmd.seq);
      Atomics.notify(this.ack, 0);
    }
  }

  /**
   * GuestMemory.missHook: an access found no region. The front-end is answered for ADD_MEM_REG before this thread
   * maps the region (it may be busy in a request, or blocked in the kernel on a stalled device), and the driver may use
   * the memory as soon as the answer went: regions this thread was told to add are mapped now, ahead of their turn,
   * unless a command that changes memory otherwise comes before them. Returns true if any was mapped.
   */
  private applyEarlyAdds(): boolean {
    for (;;) {
      const m = receiveMessageOnPort(this.init.port);
      if (m === undefined) break;
      this.stash.push({ cmd: m.message as WorkerCommand, done: false });
    }
    let mapped = false;
    for (const s of this.stash) {
      const cmd = s.cmd;
      if (cmd.op === 'memory' || cmd.op === 'reset' || cmd.op === 'exit') break;
      if (cmd.op !== 'addRegion' || s.done) continue;
      // A region that a removal not yet made still holds the place of waits for its turn.
      if (this.mem !== null && this.mem.regions.some((r) => regionsOverlap(r, cmd.region))) continue;
      s.done = true;
      try {
        this.addRegion(cmd.region);
        mapped = true;
      } catch (e) {
        this.log.error({ err: e, op: cmd.op }, 'worker command failed');
        s.error = e instanceof Error ? e.message : String(e);
      }
    }
    return mapped;
  }

  private addRegion(region: MemoryRegionSpec): void {
    if (this.mem === null) this.setMem(GuestMemory.fromRegions([]));
    const mem = this.mem as GuestMemory;
    try {
      mem.addRegion(region);
      this.noteShrinkable();
    } catch (e) {
      closeQuiet(region.fd);
      throw e;
    }
  }

  private setMem(mem: GuestMemory | null): void {
    if (mem !== null) mem.missHook = () => this.applyEarlyAdds();
    this.mem = mem;
  }

  /** Says once that a front-end's memory could be truncated under this worker (a SIGBUS nothing can catch). */
  private noteShrinkable(): void {
    if (this.shrinkNoted || this.mem === null) return;
    const r = this.mem.regions.find((x) => x.shrinkable);
    if (r === undefined) return;
    this.shrinkNoted = true;
    this.log.info({ guestAddr: r.guestAddr, size: r.size }, 'front-end memory file takes no shrink seal: a front-end that truncates it would crash this back-end');
  }

  private apply(cmd: WorkerCommand): number | undefined {
    switch (cmd.op) {
      case 'memory':
        this.quiesce();
        this.setMemory(cmd.regions, cmd.layouts);
        this.resume();
        return undefined;
      case 'addRegion':
        // No quiesce: a region only added unmaps nothing that requests in flight use, and queues re-take their views
        // when the generation changes.
        try {
          this.addRegion(cmd.region);
        } finally {
          this.resume();
        }
        return undefined;
      case 'removeRegion':
        this.quiesce();
        try {
          if (this.pinned) throw new Error('memory is pinned by a failed drain; region kept mapped');
          this.mem?.removeRegion(cmd.guestAddr, cmd.size, cmd.userAddr);
        } finally {
          this.resume();
        }
        return undefined;
      case 'start': return this.start(cmd.ring);
      case 'stop': return this.stop(cmd.index, cmd.byFrontEnd);
      case 'call': {
        const r = this.rings.get(cmd.index);
        if (r === undefined) {
          closeQuiet(cmd.fd);
          return undefined;
        }
        r.closeCall();
        r.callFd = cmd.fd;
        nonBlocking(cmd.fd);
        // A ring restarted with its kick before its call fd was served with no fd to signal: those completions must
        // not wait for the next one (libvhost-user signals a new call fd too). A spare interrupt costs nothing.
        if (cmd.fd >= 0) {
          try {
            eventfdWrite(cmd.fd);
          } catch {
            // Not a writable fd: the first completion's signal reports it as it always has.
          }
        }
        return undefined;
      }
      case 'enable': {
        const r = this.rings.get(cmd.index);
        if (r) {
          r.enabled = cmd.on;
          // Buffers made available (and kicked) while the ring was disabled must not be lost.
          if (cmd.on) this.process(r);
          else this.handler.onDisable?.(r);
        }
        return undefined;
      }
      case 'features':
        this.features = BigInt(cmd.features);
        this.applyDirtyLog();
        return undefined;
      case 'dirtyLog':
        this.setDirtyLog(cmd.log);
        return undefined;
      case 'usedLog': {
        const r = this.rings.get(cmd.index);
        if (r) r.dirty.usedAddr = cmd.addr ?? r.queue.layout.usedAddr;
        return undefined;
      }
      case 'reset':
        this.reset();
        return undefined;
      case 'exit':
        this.running = false;
        this.reset();
        try {
          this.handler.close?.();
        } catch (e) {
          this.log.error({ err: e }, 'queue handler close failed');
        }
        return undefined;
    }
  }

  private setMemory(regions: MemoryRegionSpec[], layouts: { index: number; layout: QueueLayout }[]): undefined {
    const next = GuestMemory.fromRegions([]);
    let added = 0;
    try {
      for (const r of regions) {
        next.addRegion(r);
        added++;
      }
      const rebuilt = layouts.map(({ index, layout }) => {
        const ring = this.rings.get(index);
        if (ring === undefined) return null;
        const q = new DeviceQueue(next, layout, { eventIdx: ring.eventIdx });
        q.nextAvailIdx = ring.queue.nextAvailIdx;
        q.trackDirty(ring.dirty);
        if (ring.inflight !== null) q.trackInflight(ring.inflight.ring, false);
        return { ring, q };
      });
      for (const x of rebuilt) if (x) x.ring.queue = x.q;
    } catch (e) {
      next.close();
      for (const r of regions.slice(added)) closeQuiet(r.fd);
      throw e;
    }
    this.release(this.mem);
    this.setMem(next);
    this.noteShrinkable();
    return undefined;
  }

  /** Starts a ring, which owns s.kickFd and s.callFd from then on (they are closed here if it cannot start). */
  private start(s: RingStart): undefined {
    let ring: WorkerRing;
    let inflight: { ring: InflightRing; map: Mapping } | null = null;
    let dirty: RingDirtyLog;
    try {
      if (this.mem === null) throw new Error('ring started before the memory table');
      if (this.rings.has(s.index)) this.stop(s.index, false);
      const q = new DeviceQueue(this.mem, s.layout, { eventIdx: s.eventIdx });
      q.nextAvailIdx = s.nextAvail;
      dirty = new RingDirtyLog(s.layout.size, s.usedLog ?? s.layout.usedAddr);
      q.trackDirty(dirty);
      if (s.inflight !== null) {
        inflight = mapInflight(s.inflight, s.layout.size);
        this.recoverInflight(s.index, q, inflight.ring);
      }
      this.features = BigInt(s.features);
      nonBlocking(s.kickFd);
      nonBlocking(s.callFd);
      ring = new WorkerRing(s.index, q, dirty, s.enabled, s.kickFd, s.callFd, s.eventIdx, this.signals);
      ring.inflight = inflight;
      if (s.kickFd >= 0) this.epoll.add(s.kickFd, EPOLLIN, s.index);
    } catch (e) {
      inflight?.map.unmap();
      closeQuiet(s.kickFd);
      closeQuiet(s.callFd);
      throw e;
    }
    if (s.kickFd < 0) this.polled.push(ring);
    this.rings.set(s.index, ring);
    this.applyDirtyLog();
    this.handler.onStart(ring);
    if (ring.enabled) this.process(ring);
    return undefined;
  }

  private stop(index: number, byFrontEnd: boolean): number | undefined {
    const ring = this.rings.get(index);
    if (ring === undefined) return undefined;
    this.polled = this.polled.filter((r) => r !== ring);
    this.rings.delete(index);
    try {
      if (ring.kickFd >= 0 && !ring.kickDropped) this.epoll.remove(ring.kickFd);
    } catch (e) {
      this.log.error({ err: e, ring: index }, 'removing a kick fd from epoll failed');
    }
    try {
      this.handler.onStop(ring, byFrontEnd);
    } catch (e) {
      this.log.error({ err: e, ring: index }, 'queue handler onStop failed');
    }
    closeQuiet(ring.kickFd);
    ring.closeCall();
    // A handler that could not drain may still complete into the region: keep it mapped then (as guest memory).
    if (!this.pinned) ring.inflight?.map.unmap();
    return ring.queue.nextAvailIdx;
  }

  /** Picks up what an earlier back-end left in flight on this ring (see DeviceQueue.trackInflight). */
  private recoverInflight(index: number, q: DeviceQueue, region: InflightRing): void {
    let found;
    try {
      found = q.trackInflight(region, true);
    } catch (e) {
      // Rings outside mapped memory: RingMemoryError, like any start before its memory is back.
      if (e instanceof RingMemoryError) throw e;
      throw new Error(`inflight region unusable: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (found === null) return;
    if (found.state === 'reset') this.peerWarn.warn({ ring: index }, 'inflight buffer does not match the ring; tracking starts afresh');
    if (found.resubmitted > 0) this.log.info({ ring: index, requests: found.resubmitted, nextAvail: q.nextAvailIdx }, 'resubmitting requests an earlier back-end left in flight');
  }

  private reset(): void {
    for (const i of [...this.rings.keys()]) this.stop(i, true);
    this.release(this.mem);
    this.setMem(null);
    this.setDirtyLog(null);
  }

  /** Maps a new log (SET_LOG_BASE) in place of the old one, which is unmapped once no ring marks it. */
  private setDirtyLog(spec: LogSpec | null): void {
    const old = this.dirtyLog;
    this.dirtyLog = spec === null ? null : mapDirtyLog(spec);
    this.applyDirtyLog();
    if (old === null) return;
    if (old.log.missedPages > 0) this.peerWarn.warn({ pages: old.log.missedPages }, 'pages written past the end of the dirty log were not marked');
    // A handler that could not drain may still complete (and mark) later: keep it mapped then.
    if (!this.pinned) old.map.unmap();
  }

  /** Rings mark the log while the front-end logs: VHOST_F_LOG_ALL acked and a log set. */
  private applyDirtyLog(): void {
    const log = (this.features & F_LOG_ALL) !== 0n ? this.dirtyLog?.log ?? null : null;
    for (const r of this.rings.values()) r.dirty.log = log;
  }
}

/**
 * Maps [offset, offset + len) of a front-end's file and hands `use` a view of exactly that (closing the fd): mmap wants
 * a page-aligned offset, the front-end's need not be one. The range is viewed on its own, not through the mapping's
 * view: a 4 GiB range off a page boundary makes a mapping larger than one typed array may be (Mapping then has none).
 */
function mapRange<T>(fd: number, offset: number, len: number, use: (bytes: Uint8Array) => T): { value: T; map: Mapping } {
  try {
    const skip = offset % 4096;
    const map = mapFd(fd, skip + len, offset - skip);
    try {
      const bytes = viewOf(map.ptr + BigInt(skip), len);
      if (bytes.length !== len) throw new Error(`a range of ${len} bytes cannot be viewed`);
      return { value: use(bytes), map };
    } catch (e) {
      map.unmap();
      throw e;
    }
  } finally {
    closeQuiet(fd);
  }
}

/** Maps a ring's region of the inflight buffer. */
function mapInflight(r: RingInflight, size: number): { ring: InflightRing; map: Mapping } {
  const { value, map } = mapRange(r.fd, r.offset, inflightRegionSize(size), (b) => new InflightRing(b, size));
  return { ring: value, map };
}

/** Maps the dirty log (a log viewed as empty would mark nothing: one that cannot be viewed whole is refused). */
function mapDirtyLog(spec: LogSpec): { log: DirtyLog; map: Mapping } {
  const { value, map } = mapRange(spec.fd, spec.offset, spec.size, (b) => new DirtyLog(b));
  return { log: value, map };
}

async function main(): Promise<void> {
  const init = workerData as WorkerInit;
  const log = logger(init.logName, { worker: init.workerIndex });
  // Named after the worker starts its helper thread, which would otherwise carry the name until it loads.
  const w = new QueueWorker(init, log);
  try {
    setThreadName(`vu-q${init.workerIndex}`);
  } catch {
    // naming the thread is cosmetic
  }
  try {
    await w.load();
  } catch (e) {
    w.stopSignalHelper(); // the pool terminates this thread on the error
    markStartupDone();
    parentPort?.postMessage({ ready: true, error: e instanceof Error ? e.message : String(e), setup: e instanceof SetupError });
    return;
  }
  markStartupDone();
  parentPort?.postMessage({ ready: true });
  w.loop();
  // Loader hooks (tsx) and handler handles may keep this thread alive; in a worker, exit() ends only the thread.
  process.exit(0);
}

void main();
