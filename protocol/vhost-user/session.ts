import { WarnLimiter, type Logger } from '../log.js';
import { mappableFileSize, type MemoryRegionSpec } from '../memory/index.js';
import { closeQuiet, dup } from '../sys/fd.js';
import { sealAgainstShrink } from '../sys/mem.js';
import { fstatSync } from 'node:fs';
import { isQueueSize, ringSizes, validateLayout, type QueueLayout } from '../virtqueue/index.js';
import type { VhostUserBackend } from './backend-types.js';
import { reply, needsReply, type Message } from './codec.js';
import { VhostUserError, VhostUserProtocolError } from './errors.js';
import { InflightBuffer, InflightUnsealableError } from './inflight-buffer.js';
import { MemoryTable, regionsOverlap } from './memory-table.js';
import {
  F_LOG_ALL, F_PROTOCOL_FEATURES, MAX_CONFIG_SIZE, VHOST_USER_CONFIG_OFFSET, ProtocolFeature, Request, VRING_IDX_MASK, VRING_NOFD_MASK,
  hasProtocolFeature, protocolFeatures, requestName,
} from './messages.js';
import type { MemRegion, Payload, PayloadOf, VringAddr } from './payload.js';
import type { WorkerPool } from './worker-pool.js';

/** Protocol features the daemon itself knows how to serve; backends choose among them. */
export const SUPPORTED_PROTOCOL_FEATURES = protocolFeatures(
  ProtocolFeature.MQ, ProtocolFeature.LOG_SHMFD, ProtocolFeature.REPLY_ACK, ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG, ProtocolFeature.RESET_DEVICE, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS,
  ProtocolFeature.INFLIGHT_SHMFD,
);

/** A sensible default set for backends: MQ, REPLY_ACK, CONFIGURE_MEM_SLOTS, STATUS, RESET_DEVICE. */
export const DEFAULT_PROTOCOL_FEATURES = protocolFeatures(
  ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.STATUS,
  ProtocolFeature.RESET_DEVICE,
);

export const MAX_MEM_SLOTS = 64;
const F_EVENT_IDX = 1n << 29n;
/** SET_VRING_ADDR flags: the used ring is logged at log_guest_addr. */
const VRING_F_LOG = 1;
/** A log this large covers 128 TiB of guest memory (and is the most one typed-array view holds). */
const MAX_LOG_SIZE = 0x1_0000_0000;

/** The request is understood but refused: NACK it (when an ack was asked for) and keep the connection. */
export class RequestRefusedError extends VhostUserError {}

interface RingState {
  num: number;
  addr: VringAddr | null;
  base: number;
  /** null: not set; -1: set without an fd (poll). */
  kick: number | null;
  call: number;
  err: number;
  enabled: boolean;
  started: boolean;
}

function newRing(enabled: boolean): RingState {
  return { num: 0, addr: null, base: 0, kick: null, call: -1, err: -1, enabled, started: false };
}

function bad(msg: string, ctx: Record<string, unknown> = {}): never {
  throw new VhostUserProtocolError(msg, ctx);
}

/**
 * The state of one front-end connection and the handling of its requests. Every handler either returns a
 * reply payload (for requests that have their own reply) or null; errors close the connection except
 * RequestRefusedError, which becomes a NACK.
 */
export class Session {
  private features = 0n;
  private proto = 0n;
  private status = 0;
  private readonly mem = new MemoryTable();
  private rings: RingState[];
  private backendReqFd = -1;
  private readonly qpw: number;
  /** INFLIGHT_SHMFD: the buffer rings record their in-flight heads in (GET/SET_INFLIGHT_FD), or null. */
  private inflight: InflightBuffer | null = null;
  /** REM_MEM_REGs answered before the workers unmapped the region: the command each worker was sent (see awaitRemovals). */
  private removals: { region: MemRegion; seqs: number[] }[] = [];
  /** File descriptors that go with the reply being built (GET_INFLIGHT_FD); sent, then closed, by the daemon. */
  private replyFds: number[] = [];

  constructor(
    private readonly backend: VhostUserBackend,
    private readonly pool: WorkerPool,
    private readonly log: Logger,
    /** A front-end can send refused requests at will, over and over connections: the daemon's limiter. */
    private readonly refusals: WarnLimiter,
  ) {
    this.qpw = Math.max(1, backend.queuesPerWorker ?? 1);
    this.rings = Array.from({ length: backend.numQueues }, () => newRing(false));
  }

  get offeredFeatures(): bigint {
    return this.backend.features() | F_PROTOCOL_FEATURES;
  }

  get offeredProtocolFeatures(): bigint {
    return this.backend.protocolFeatures() & SUPPORTED_PROTOCOL_FEATURES;
  }

  /** Handles one request; returns the reply to send, if any. Takes ownership of msg.fds. */
  handle(msg: Message): Message | null {
    let own: Payload | null;
    this.replyFds = [];
    try {
      own = this.dispatch(msg);
    } catch (e) {
      this.replyFds.forEach(closeQuiet);
      if (e instanceof RequestRefusedError) {
        this.refusals.warn({ request: requestName(msg.request), err: e }, 'request refused');
        return this.ack(msg, 1n);
      }
      throw e;
    } finally {
      // Handlers dup what they keep; whatever is left here is closed (see keepFd).
      for (const fd of msg.fds) if (!this.kept.has(fd)) closeQuiet(fd);
      this.kept.clear();
    }
    if (own !== null) return reply(msg.request, own, this.replyFds);
    return this.ack(msg, 0n);
  }

  /** Stops every ring and closes every fd (the connection ended); waits for the workers at most timeoutMs. */
  close(timeoutMs?: number): void {
    try {
      this.pool.broadcast({ op: 'reset' }, timeoutMs);
    } catch (e) {
      this.log.error({ err: e }, 'resetting queue workers failed');
    }
    for (const r of this.rings) this.closeRingFds(r);
    this.rings = this.rings.map(() => newRing(false));
    closeQuiet(this.backendReqFd);
    this.backendReqFd = -1;
    this.inflight?.close();
    this.inflight = null;
    this.mem.clear();
    this.removals = [];
  }

  private readonly kept = new Set<number>();
  private keepFd(fd: number): number {
    this.kept.add(fd);
    return fd;
  }

  private ack(msg: Message, status: bigint): Message | null {
    if (needsReply(msg) && hasProtocolFeature(this.proto, ProtocolFeature.REPLY_ACK)) {
      return reply(msg.request, { kind: 'u64', value: status });
    }
    return null;
  }

  private ring(index: number): RingState {
    if (!Number.isInteger(index) || index < 0 || index >= this.rings.length) bad('ring index out of range', { index, numQueues: this.rings.length });
    return this.rings[index];
  }

  private worker(index: number) {
    return this.pool.worker(Math.floor(index / this.qpw));
  }

  private dispatch(msg: Message): Payload | null {
    const p = msg.payload;
    switch (msg.request) {
      case Request.SET_OWNER:
        return null;
      case Request.RESET_OWNER:
      case Request.RESET_DEVICE:
        this.resetDevice();
        return null;
      case Request.GET_FEATURES:
        return { kind: 'u64', value: this.offeredFeatures };
      case Request.SET_FEATURES:
        this.setFeatures((p as PayloadOf<'u64'>).value);
        return null;
      case Request.GET_PROTOCOL_FEATURES:
        return { kind: 'u64', value: this.offeredProtocolFeatures };
      case Request.SET_PROTOCOL_FEATURES: {
        const v = (p as PayloadOf<'u64'>).value;
        if (v & ~this.offeredProtocolFeatures) bad('protocol features not offered', { acked: v.toString(16), offered: this.offeredProtocolFeatures.toString(16) });
        this.proto = v;
        return null;
      }
      case Request.GET_QUEUE_NUM:
        return { kind: 'u64', value: BigInt(this.backend.numQueues) };
      case Request.GET_MAX_MEM_SLOTS:
        return { kind: 'u64', value: BigInt(MAX_MEM_SLOTS) };
      case Request.SET_MEM_TABLE:
        this.setMemTable((p as PayloadOf<'memTable'>).regions, msg.fds);
        return null;
      case Request.ADD_MEM_REG:
        this.addMemRegion((p as PayloadOf<'memRegion'>).region, msg.fds[0]);
        return null;
      case Request.REM_MEM_REG:
        this.removeMemRegion((p as PayloadOf<'memRegion'>).region);
        return null;
      case Request.SET_VRING_NUM: {
        const s = p as PayloadOf<'vringState'>;
        const r = this.ring(s.index);
        const max = this.backend.maxQueueSize;
        if (!isQueueSize(s.num, max)) bad('queue size must be a power of two up to the maximum', { num: s.num, max });
        // On a running ring (front-ends stop it first): stop it, so that no request of the old size is still out.
        if (r.started) r.base = this.stopRing(s.index, false);
        r.num = s.num;
        this.tryStart(s.index, r);
        return null;
      }
      case Request.SET_VRING_ADDR:
        this.setVringAddr(p as PayloadOf<'vringAddr'>);
        return null;
      case Request.SET_VRING_BASE: {
        const s = p as PayloadOf<'vringState'>;
        const r = this.ring(s.index);
        if (s.num > 0xffff) bad('vring base out of range for a split ring', { base: s.num });
        if (r.started) this.stopRing(s.index, false);
        r.base = s.num;
        this.tryStart(s.index, r);
        return null;
      }
      case Request.GET_VRING_BASE: {
        const s = p as PayloadOf<'vringState'>;
        const next = this.stopRing(s.index, true);
        return { kind: 'vringState', index: s.index, num: next };
      }
      case Request.SET_VRING_KICK:
      case Request.SET_VRING_CALL:
      case Request.SET_VRING_ERR:
        this.setVringFile(msg.request, (p as PayloadOf<'u64'>).value, msg.fds);
        return null;
      case Request.SET_VRING_ENABLE: {
        const s = p as PayloadOf<'vringState'>;
        const r = this.ring(s.index);
        if (s.num > 1) bad('SET_VRING_ENABLE takes 0 or 1', { num: s.num });
        r.enabled = s.num === 1;
        if (r.started) this.worker(s.index).send({ op: 'enable', index: s.index, on: r.enabled });
        return null;
      }
      case Request.GET_CONFIG:
        return this.getConfig(p as PayloadOf<'config'>);
      case Request.SET_CONFIG: {
        const c = p as PayloadOf<'config'>;
        if (!this.backend.setConfig) throw new RequestRefusedError('device config is read-only', { offset: c.offset });
        try {
          this.backend.setConfig(configOffset(c.offset), c.data);
        } catch (e) {
          throw new RequestRefusedError('back-end refused SET_CONFIG', { offset: c.offset, cause: String(e) });
        }
        this.saveState();
        return null;
      }
      case Request.SET_STATUS:
        this.status = Number((p as PayloadOf<'u64'>).value & 0xffn);
        return null;
      case Request.GET_STATUS:
        return { kind: 'u64', value: BigInt(this.status) };
      case Request.SET_LOG_BASE:
        this.setLogBase(p as PayloadOf<'log'>, msg.fds);
        // With LOG_SHMFD the front-end waits for this reply (QEMU, Cloud Hypervisor): the log is in use once it comes.
        return hasProtocolFeature(this.proto, ProtocolFeature.LOG_SHMFD) ? { kind: 'u64', value: 0n } : null;
      case Request.SET_LOG_FD:
        return null;
      case Request.GET_INFLIGHT_FD:
        return this.getInflight(p as PayloadOf<'inflight'>);
      case Request.SET_INFLIGHT_FD:
        this.setInflight(p as PayloadOf<'inflight'>, msg.fds[0]);
        return null;
      case Request.SET_BACKEND_REQ_FD:
        closeQuiet(this.backendReqFd);
        this.backendReqFd = this.keepFd(msg.fds[0]);
        return null;
      default:
        return this.unsupported(msg);
    }
  }

  private unsupported(msg: Message): Payload | null {
    // A request whose reply we cannot produce would desynchronise the stream: end the connection.
    const needsOwnReply = [
      Request.POSTCOPY_ADVISE, Request.POSTCOPY_END, Request.GET_SHARED_OBJECT,
      Request.SET_DEVICE_STATE_FD, Request.CHECK_DEVICE_STATE, Request.GET_SHMEM_CONFIG, Request.CREATE_CRYPTO_SESSION,
    ].includes(msg.request);
    if (needsOwnReply) bad('unsupported request', { request: requestName(msg.request) });
    throw new RequestRefusedError('unsupported request', { request: requestName(msg.request) });
  }

  private inflightOn(request: Request): void {
    if (!hasProtocolFeature(this.proto, ProtocolFeature.INFLIGHT_SHMFD)) bad('INFLIGHT_SHMFD was not negotiated', { request: requestName(request) });
  }

  /** A fresh buffer for the front-end to keep; rings started from now on record into it. */
  private getInflight(p: PayloadOf<'inflight'>): Payload {
    this.inflightOn(Request.GET_INFLIGHT_FD);
    const buf = InflightBuffer.create(p, this.rings.length, this.backend.maxQueueSize);
    this.inflight?.close();
    this.inflight = buf;
    this.saveState();
    this.replyFds.push(buf.dupFd());
    return buf.payload();
  }

  /** The buffer the front-end kept (from this back-end or an earlier one): running rings go on in their own until restarted. */
  private setInflight(p: PayloadOf<'inflight'>, fd: number): void {
    this.inflightOn(Request.SET_INFLIGHT_FD);
    // The front-end keeps this one, whatever becomes of it: rings started from now on must not track into an older one.
    this.inflight?.close();
    this.inflight = null;
    try {
      this.inflight = InflightBuffer.adopt(p, dup(fd), this.rings.length, this.backend.maxQueueSize);
    } catch (e) {
      if (e instanceof InflightUnsealableError) throw new RequestRefusedError(e.message, e.context);
      throw e;
    }
    const saved = this.inflight.savedState();
    if (saved === null || !this.backend.restoreState) {
      this.saveState();
      return;
    }
    try {
      this.backend.restoreState(saved);
    } catch (e) {
      this.log.warn({ err: e }, 'device state in the inflight buffer not restored');
    }
  }

  /** Keeps the back-end's driver-written state in the inflight buffer, for a back-end restarted after this one. */
  private saveState(): void {
    if (this.inflight === null || !this.backend.saveState) return;
    try {
      this.inflight.saveState(this.backend.saveState());
    } catch (e) {
      this.log.warn({ err: e }, 'device state not kept in the inflight buffer');
    }
  }

  /**
   * SET_LOG_BASE (migration): the bitmap every queue worker marks the guest pages it writes in, once VHOST_F_LOG_ALL is
   * acked. Cloud Hypervisor sends a fresh one for each pass; QEMU one for the whole migration.
   */
  private setLogBase(p: PayloadOf<'log'>, fds: number[]): void {
    if (!hasProtocolFeature(this.proto, ProtocolFeature.LOG_SHMFD)) throw new RequestRefusedError('SET_LOG_BASE without LOG_SHMFD');
    // A log that cannot be used ends the connection (as libvhost-user does): the front-end, waiting for the reply,
    // would otherwise migrate a guest whose pages written from here are never sent again.
    if (fds.length !== 1) bad('SET_LOG_BASE needs one fd', { fds: fds.length });
    const fd = fds[0];
    if (!Number.isSafeInteger(p.size) || p.size < 1 || p.size > MAX_LOG_SIZE || !Number.isSafeInteger(p.offset) || p.offset < 0) {
      bad('dirty log size or offset out of range', { size: p.size, offset: p.offset, max: MAX_LOG_SIZE });
    }
    // A page past the file's end raises SIGBUS in the queue thread that marks it: the file must hold the whole log,
    // and stay that long (QEMU seals its log memfd; the seal is added here where it can be).
    const fileSize = fstatSync(fd).size;
    if (p.offset + p.size > fileSize) bad('dirty log is larger than its file', { size: p.size, offset: p.offset, fileSize });
    if (!sealAgainstShrink(fd)) this.log.info({ fileSize }, 'dirty log file takes no shrink seal: a front-end that truncates it would crash this back-end');
    for (let w = 0; w < this.pool.size; w++) this.pool.worker(w).send({ op: 'dirtyLog', log: { fd: dup(fd), size: p.size, offset: p.offset } });
    this.log.info({ size: p.size }, 'dirty log set');
  }

  private setFeatures(v: bigint): void {
    const offered = this.offeredFeatures;
    if (v & ~offered) bad('features not offered', { acked: v.toString(16), offered: offered.toString(16) });
    // Logging turned on or off under running rings (a migration starting or ending).
    const logChanged = ((v ^ this.features) & F_LOG_ALL) !== 0n;
    this.features = v;
    if (logChanged) this.pool.broadcast({ op: 'features', features: v.toString() });
    this.backend.ackFeatures?.(v);
    if (!(v & F_PROTOCOL_FEATURES)) {
      // Without protocol features there is no SET_VRING_ENABLE: rings are enabled now.
      this.rings.forEach((r, i) => {
        if (!r.enabled) {
          r.enabled = true;
          if (r.started) this.worker(i).send({ op: 'enable', index: i, on: true });
        }
      });
    }
  }

  private resetDevice(): void {
    for (let i = 0; i < this.rings.length; i++) this.stopRing(i, true);
    this.features = 0n;
    this.status = 0;
    this.rings = this.rings.map(() => newRing(false));
    this.backend.reset?.();
    this.saveState();
  }

  private regionSpecs(regions: readonly MemRegion[], fds: number[]): MemoryRegionSpec[] {
    return regions.map((r, i) => ({ guestAddr: r.guestAddr, size: r.size, fd: dup(fds[i]), fdOffset: r.mmapOffset, userAddr: r.userAddr }));
  }

  private setMemTable(regions: MemRegion[], fds: number[]): void {
    MemoryTable.validate(regions);
    const next = new MemoryTable();
    next.replace(regions);
    // Rings keep running across a table change: re-translate their addresses against the new table.
    const layouts: { index: number; layout: QueueLayout }[] = [];
    this.rings.forEach((r, index) => {
      if (r.started && r.addr) layouts.push({ index, layout: this.translate(next, r, index) });
    });
    for (let w = 0; w < this.pool.size; w++) {
      const specs = this.regionSpecs(regions, fds);
      try {
        this.pool.worker(w).send({ op: 'memory', regions: specs, layouts });
      } catch (e) {
        throw new VhostUserError('mapping the memory table failed', { worker: w, cause: String(e) });
      }
    }
    this.mem.replace(regions);
    this.rings.forEach((r, i) => this.tryStart(i, r));
  }

  /**
   * ADD_MEM_REG is answered once every worker was told, without waiting for them to map the region: QEMU waits for the
   * answer with its main loop held (device_add pc-dimm), and a worker may be busy in a request the device holds up (a
   * frozen file system) for as long as the device likes; the whole guest froze meanwhile. A worker maps the region
   * before its first access there (GuestMemory.missHook), so no request the driver makes after the answer misses it.
   */
  private addMemRegion(region: MemRegion, fd: number): void {
    checkRegionFile(region, fd);
    if (!this.mem.add(region, MAX_MEM_SLOTS)) return; // already mapped (its fd is closed with the message's)
    this.awaitRemovals(region);
    for (let w = 0; w < this.pool.size; w++) {
      const spec = this.regionSpecs([region], [fd])[0];
      try {
        this.pool.worker(w).post({ op: 'addRegion', region: spec });
      } catch (e) {
        closeQuiet(spec.fd);
        throw e;
      }
    }
    this.rings.forEach((r, i) => this.tryStart(i, r));
  }

  private removeMemRegion(region: MemRegion): void {
    const r = this.mem.remove(region);
    if (r === 'none') throw new RequestRefusedError('no such memory region', { ...region });
    if (r === 'kept') return;
    // Answered without waiting, as ADD_MEM_REG (device_del pc-dimm waits for it with QEMU's main loop held): each worker
    // unmaps the region on its turn, once its requests in flight are done, so none of them touches unmapped memory.
    const seqs: number[] = [];
    for (let w = 0; w < this.pool.size; w++) {
      seqs.push(this.pool.worker(w).post({ op: 'removeRegion', guestAddr: region.guestAddr, size: region.size, userAddr: region.userAddr }));
    }
    this.removals = this.removals.filter((p) => p.seqs.some((seq, w) => !this.pool.worker(w).answered(seq)));
    this.removals.push({ region: { ...region }, seqs });
  }

  /**
   * A region added where one is still being removed (a DIMM unplugged and another plugged at its address) waits for
   * the workers to unmap the old one: until then a request there would be served from the old mapping.
   */
  private awaitRemovals(r: MemRegion): void {
    this.removals = this.removals.filter((p) => {
      if (!regionsOverlap(r, p.region)) return true;
      p.seqs.forEach((seq, w) => this.pool.worker(w).waitAnswered(seq, 'removeRegion'));
      return false;
    });
  }

  private setVringAddr(a: PayloadOf<'vringAddr'>): void {
    const r = this.ring(a.index);
    if (a.desc % 16 !== 0 || a.avail % 2 !== 0 || a.used % 4 !== 0) {
      bad('ring addresses are misaligned', { index: a.index, desc: a.desc, avail: a.avail, used: a.used });
    }
    const old = r.addr;
    if (r.started && old !== null && old.desc === a.desc && old.avail === a.avail && old.used === a.used) {
      // Only the used ring's logging changed (a migration starting or ending): the ring goes on as it is.
      r.addr = { ...old, flags: a.flags, log: a.log };
      this.worker(a.index).send({ op: 'usedLog', index: a.index, addr: usedLog(r.addr) });
      return;
    }
    if (r.started) r.base = this.stopRing(a.index, false);
    r.addr = { index: a.index, flags: a.flags, desc: a.desc, used: a.used, avail: a.avail, log: a.log };
    if (!this.mem.isEmpty && r.num > 0) this.translate(this.mem, r, a.index);
    this.tryStart(a.index, r);
  }

  private setVringFile(req: Request, value: bigint, fds: number[]): void {
    const index = Number(value & BigInt(VRING_IDX_MASK));
    if (value & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK)) bad('unknown bits in vring file payload', { value: value.toString(16) });
    const r = this.ring(index);
    const fd = fds.length > 0 ? this.keepFd(fds[0]) : -1;
    if (req === Request.SET_VRING_KICK) {
      if (r.started) r.base = this.stopRing(index, false);
      if (r.kick !== null) closeQuiet(r.kick);
      r.kick = fd;
      this.tryStart(index, r);
    } else if (req === Request.SET_VRING_CALL) {
      const old = r.call;
      r.call = fd;
      if (r.started) this.worker(index).send({ op: 'call', index, fd: fd >= 0 ? dup(fd) : -1 });
      closeQuiet(old);
    } else {
      closeQuiet(r.err);
      r.err = fd;
    }
  }

  private translate(table: MemoryTable, r: RingState, index: number): QueueLayout {
    const a = r.addr;
    if (a === null || r.num === 0) bad('ring is not configured', { index });
    const s = ringSizes(r.num);
    const desc = table.userToGuest(a.desc, s.desc);
    const avail = table.userToGuest(a.avail, s.avail);
    const used = table.userToGuest(a.used, s.used);
    if (desc === null || avail === null || used === null) {
      bad('ring address is outside the memory table', { index, desc: a.desc, avail: a.avail, used: a.used });
    }
    const layout = { size: r.num, descAddr: desc, availAddr: avail, usedAddr: used };
    try {
      validateLayout(layout);
    } catch (e) {
      bad('invalid ring layout', { index, cause: String(e) });
    }
    return layout;
  }

  /**
   * A ring starts once it has a kick (or no-fd poll), addresses, a size and a memory table. The worker gets
   * duplicates of the kick and call fds and closes them itself: one that missed a command's deadline may still
   * use its fds after this side closed its own, and must not find other files under their numbers.
   */
  private tryStart(index: number, r: RingState): void {
    if (r.started || r.kick === null || r.addr === null || r.num === 0 || this.mem.isEmpty) return;
    const layout = this.translate(this.mem, r, index);
    this.worker(index).send({
      op: 'start',
      ring: {
        index, layout, nextAvail: r.base, kickFd: r.kick >= 0 ? dup(r.kick) : -1, callFd: r.call >= 0 ? dup(r.call) : -1, enabled: r.enabled,
        eventIdx: (this.features & F_EVENT_IDX) !== 0n, features: this.features.toString(), usedLog: usedLog(r.addr),
        inflight: this.inflight?.ringRegion(index, r.num) ?? null,
      },
    });
    r.started = true;
  }

  /** Stops a started ring and returns its next avail index; `drop` also closes its fds (GET_VRING_BASE). */
  private stopRing(index: number, drop: boolean): number {
    const r = this.ring(index);
    let next = r.base;
    if (r.started) {
      const v = this.worker(index).send({ op: 'stop', index, byFrontEnd: drop });
      if (typeof v === 'number') next = v;
      r.started = false;
      r.base = next;
    }
    if (drop) this.closeRingFds(r);
    return next;
  }

  private closeRingFds(r: RingState): void {
    if (r.kick !== null) closeQuiet(r.kick);
    closeQuiet(r.call);
    closeQuiet(r.err);
    r.kick = null;
    r.call = -1;
    r.err = -1;
  }

  private getConfig(c: PayloadOf<'config'>): Payload {
    const size = c.data.length;
    if (size === 0 || size > MAX_CONFIG_SIZE) bad('GET_CONFIG size must be 1..256', { size });
    let data: Uint8Array;
    try {
      const got = this.backend.getConfig(configOffset(c.offset), size);
      data = new Uint8Array(size);
      data.set(got.subarray(0, size));
    } catch (e) {
      // libvhost-user signals failure with an empty config; QEMU then reports the error.
      this.refusals.warn({ err: e, offset: c.offset, size }, 'GET_CONFIG failed');
      data = new Uint8Array(0);
    }
    return { kind: 'config', offset: c.offset, flags: c.flags, data };
  }
}

/**
 * What a worker would refuse to map, found before the front-end is answered (workers map ADD_MEM_REG regions after it):
 * a file that is not a regular file or block device, or one shorter than the region.
 */
function checkRegionFile(r: MemRegion, fd: number): void {
  if (fd === undefined || fd < 0) bad('ADD_MEM_REG without an fd');
  let size: number | null;
  try {
    size = mappableFileSize(fd);
  } catch (e) {
    bad('ADD_MEM_REG fd cannot be examined', { cause: String(e) });
  }
  if (size === null) bad('memory region fd is neither a regular file (memfd, tmpfs, hugetlbfs) nor a block device');
  if (size < r.mmapOffset + r.size) bad('memory region extends past the end of its file', { mmapOffset: r.mmapOffset, size: r.size, fileSize: size });
}

/** Where the used ring is logged, if its SET_VRING_ADDR asked for logging. */
function usedLog(a: VringAddr | null): number | null {
  return a !== null && (a.flags & VRING_F_LOG) !== 0 ? a.log : null;
}

/** The device config offset a GET/SET_CONFIG means (see VHOST_USER_CONFIG_OFFSET); the reply echoes the one sent. */
function configOffset(offset: number): number {
  return offset >= VHOST_USER_CONFIG_OFFSET ? offset - VHOST_USER_CONFIG_OFFSET : offset;
}
