import type { GuestMemory } from '../memory/index.js';
import { closeQuiet } from '../sys/fd.js';
import { KumoError } from '../errors.js';
import { SysError } from '../sys/libc.js';
import { peekState, unixConnect } from '../sys/socket.js';
import type { QueueLayout } from '../virtqueue/index.js';
import { VhostUserChannel, type RawMessage } from './channel.js';
import { decodeReply, hasOwnReply, request, type Message } from './codec.js';
import { VhostUserError, VhostUserNackError, VhostUserProtocolError, VhostUserTimeoutError } from './errors.js';
import {
  F_PROTOCOL_FEATURES, ProtocolFeature, Request, VRING_NOFD_MASK, hasProtocolFeature, requestName,
} from './messages.js';
import type { MemRegion, Payload, PayloadOf } from './payload.js';

export interface FrontendOptions {
  /** How long one request waits for its reply, and a send for room on a full socket (ms). */
  replyTimeoutMs?: number;
  /** With REPLY_ACK negotiated, ask for an ack on every request (Cloud Hypervisor does); otherwise only where it matters. */
  ackEveryRequest?: boolean;
}

export interface ConnectOptions extends FrontendOptions {
  /** Keep retrying a missing/refusing socket this long (ms); Cloud Hypervisor retries for 60 s. */
  retryForMs?: number;
  retryEveryMs?: number;
}

/** Requests QEMU always sends with NEED_REPLY when REPLY_ACK is negotiated. */
const ACKED_BY_DEFAULT = new Set<Request>([
  Request.SET_MEM_TABLE, Request.ADD_MEM_REG, Request.REM_MEM_REG, Request.SET_CONFIG, Request.NET_SET_MTU,
  Request.SET_VRING_ENABLE, Request.SET_STATUS, Request.SET_INFLIGHT_FD,
]);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * A back-end answers SET_MEM_TABLE / ADD_MEM_REG only after mapping and indexing the memory, which costs it time per
 * page: DPDK 22.11's vhost library took 8.8 s for 4.5 GiB of 4 KiB-page guest RAM and 35.6 s for 14 GiB. QEMU and
 * Cloud Hypervisor wait for that reply without a limit; we wait at least this long per GiB (and never less than
 * replyTimeoutMs).
 */
export const MEM_TABLE_MS_PER_GIB = 10_000;

/**
 * The front-end side of a vhost-user connection: synchronous request/reply calls (each waits for its
 * reply, at most replyTimeoutMs). Used by kumo-vu and the VMM.
 */
export class VhostUserFrontend {
  readonly channel: VhostUserChannel;
  private readonly timeoutMs: number;
  private readonly ackAll: boolean;
  /** Protocol features acked with SET_PROTOCOL_FEATURES. */
  protocolFeatures = 0n;
  /** Virtio features set with SET_FEATURES. */
  features = 0n;
  /**
   * Replies still due to requests whose wait timed out (a back-end draining slow I/O before it answers GET_VRING_BASE).
   * They come first on the socket and are dropped, so that every later request reads its own reply.
   */
  private owed = 0;

  constructor(fd: number, opts: FrontendOptions = {}) {
    this.timeoutMs = opts.replyTimeoutMs ?? 30_000;
    // A burst of requests that need no reply (SET_VRING_* without REPLY_ACK) can fill the socket while the back-end's
    // main thread is busy: waited for as long as a reply would be, not dropped after the back-end's 1 s.
    this.channel = new VhostUserChannel(fd, this.timeoutMs);
    this.ackAll = opts.ackEveryRequest ?? false;
  }

  static async connect(path: string, opts: ConnectOptions = {}): Promise<VhostUserFrontend> {
    const until = Date.now() + (opts.retryForMs ?? 0);
    for (;;) {
      try {
        return new VhostUserFrontend(unixConnect(path), opts);
      } catch (e) {
        // Only a back-end still starting (no socket yet, or not listening yet) is worth waiting for.
        const starting = e instanceof SysError && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EAGAIN');
        if (!starting || Date.now() >= until) throw new VhostUserError(`cannot connect to the vhost-user back-end at ${path}: ${e instanceof Error ? e.message : String(e)}`, { path, cause: String(e) });
        await sleep(opts.retryEveryMs ?? 100);
      }
    }
  }

  close(): void {
    this.channel.close();
  }

  private get replyAck(): boolean {
    return hasProtocolFeature(this.protocolFeatures, ProtocolFeature.REPLY_ACK);
  }

  /** Sends a request and waits for its own reply, or for the REPLY_ACK when one was asked for. */
  call<K extends Payload['kind']>(r: Request, payload: Payload, fds: number[] = [], replyKind?: K, timeoutMs = this.timeoutMs): Message {
    const own = hasOwnReply(r);
    const wantAck = !own && this.replyAck && (this.ackAll || ACKED_BY_DEFAULT.has(r));
    this.channel.send(request(r, payload, fds, wantAck));
    if (!own && !wantAck) return { request: r, flags: 0, payload: { kind: 'none' }, fds: [] };
    const raw = this.ownReply(r, timeoutMs);
    let m: Message;
    try {
      m = decodeReply(r, raw.header, raw.payload, raw.fds, !own);
    } catch (e) {
      raw.fds.forEach(closeQuiet);
      throw e;
    }
    if (!own && m.payload.kind === 'u64' && m.payload.value !== 0n) throw new VhostUserNackError(requestName(r), m.payload.value);
    if (replyKind !== undefined && m.payload.kind !== replyKind) {
      throw new VhostUserProtocolError('unexpected reply payload', { request: requestName(r), kind: m.payload.kind });
    }
    return m;
  }

  private ownReply(r: Request, timeoutMs: number): RawMessage {
    for (;;) {
      let raw;
      try {
        raw = this.channel.recvSync(timeoutMs);
      } catch (e) {
        if (e instanceof VhostUserTimeoutError) this.owed++;
        if (e instanceof KumoError && e.context.request === undefined) e.context.request = requestName(r);
        throw e;
      }
      if (raw === null) throw new VhostUserError('back-end closed the connection', { request: requestName(r) });
      if (this.owed === 0) return raw;
      this.owed--;
      raw.fds.forEach(closeQuiet);
    }
  }

  private u64(r: Request): bigint {
    return (this.call(r, { kind: 'none' }, [], 'u64').payload as PayloadOf<'u64'>).value;
  }

  setOwner(): void {
    this.call(Request.SET_OWNER, { kind: 'none' });
  }
  resetOwner(): void {
    this.call(Request.RESET_OWNER, { kind: 'none' });
  }
  /**
   * GET_FEATURES with the reply awaited without blocking the thread (polled every pollMs): a back-end that accepted the
   * connection but does not answer (stopped, hung) holds no one up. VhostUserTimeoutError after timeoutMs.
   */
  async getFeaturesAnswered(timeoutMs: number, pollMs = 10): Promise<bigint> {
    const r = Request.GET_FEATURES;
    this.channel.send(request(r, { kind: 'none' }));
    const until = Date.now() + timeoutMs;
    while (peekState(this.channel.fd) === 'empty') {
      if (Date.now() >= until) {
        this.owed++;
        throw new VhostUserTimeoutError('the back-end accepted the connection but does not answer', { request: requestName(r), timeoutMs });
      }
      await sleep(pollMs);
    }
    const raw = this.ownReply(r, this.timeoutMs);
    raw.fds.forEach(closeQuiet);
    return (decodeReply(r, raw.header, raw.payload, raw.fds).payload as PayloadOf<'u64'>).value;
  }

  getFeatures(): bigint {
    return this.u64(Request.GET_FEATURES);
  }
  setFeatures(f: bigint): void {
    this.call(Request.SET_FEATURES, { kind: 'u64', value: f });
    this.features = f;
  }
  getProtocolFeatures(): bigint {
    return this.u64(Request.GET_PROTOCOL_FEATURES);
  }
  setProtocolFeatures(f: bigint): void {
    this.call(Request.SET_PROTOCOL_FEATURES, { kind: 'u64', value: f });
    this.protocolFeatures = f;
  }
  getQueueNum(): number {
    return Number(this.u64(Request.GET_QUEUE_NUM));
  }
  getMaxMemSlots(): number {
    return Number(this.u64(Request.GET_MAX_MEM_SLOTS));
  }
  getStatus(): number {
    return Number(this.u64(Request.GET_STATUS));
  }
  setStatus(s: number): void {
    this.call(Request.SET_STATUS, { kind: 'u64', value: BigInt(s) });
  }
  resetDevice(): void {
    this.call(Request.RESET_DEVICE, { kind: 'none' });
  }

  /**
   * SET_OWNER, feature and protocol negotiation in the order Cloud Hypervisor uses. Returns what was acked.
   * `wantFeatures` is intersected with what the back-end offers; bit 30 is kept when offered.
   */
  negotiate(wantFeatures: bigint, wantProtocol: bigint): { features: bigint; protocolFeatures: bigint; offered: bigint } {
    this.setOwner();
    const offered = this.getFeatures();
    let proto = 0n;
    if (offered & F_PROTOCOL_FEATURES) {
      proto = this.getProtocolFeatures() & wantProtocol;
      this.setProtocolFeatures(proto);
    }
    const features = offered & (wantFeatures | F_PROTOCOL_FEATURES);
    this.setFeatures(features);
    return { features, protocolFeatures: proto, offered };
  }

  /** GET_INFLIGHT_FD: the back-end's buffer for inflight tracking (INFLIGHT_SHMFD); the caller owns the fd. */
  getInflightFd(numQueues: number, queueSize: number): { buffer: PayloadOf<'inflight'>; fd: number } {
    const m = this.call(Request.GET_INFLIGHT_FD, { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues, queueSize }, [], 'inflight');
    return { buffer: m.payload as PayloadOf<'inflight'>, fd: m.fds[0] };
  }
  /** SET_INFLIGHT_FD: hands a kept buffer (back) to the back-end, as QEMU does before every device start. */
  setInflightFd(buffer: PayloadOf<'inflight'>, fd: number): void {
    this.call(Request.SET_INFLIGHT_FD, buffer, [fd]);
  }

  /**
   * SET_LOG_BASE (LOG_SHMFD must be negotiated): the back-end marks the guest pages it writes in this log while
   * VHOST_F_LOG_ALL is acked, and answers with a u64 once it does.
   */
  setLogBase(fd: number, size: number, offset = 0): void {
    const r = Request.SET_LOG_BASE;
    this.channel.send(request(r, { kind: 'log', size, offset }, [fd]));
    const raw = this.ownReply(r, this.timeoutMs);
    try {
      decodeReply(r, raw.header, raw.payload, raw.fds);
    } finally {
      raw.fds.forEach(closeQuiet);
    }
  }

  getConfig(offset: number, size: number): Uint8Array {
    const m = this.call(Request.GET_CONFIG, { kind: 'config', offset, flags: 0, data: new Uint8Array(size) }, [], 'config');
    const p = m.payload as PayloadOf<'config'>;
    if (p.data.length !== size) throw new VhostUserProtocolError('GET_CONFIG reply has the wrong size', { want: size, got: p.data.length });
    return p.data;
  }
  setConfig(offset: number, data: Uint8Array, flags = 0): void {
    this.call(Request.SET_CONFIG, { kind: 'config', offset, flags, data });
  }

  /** SET_MEM_TABLE from a GuestMemory whose regions are fd-backed (GuestMemory.anonymous). */
  setMemTable(mem: GuestMemory): void {
    const regions: MemRegion[] = [];
    const fds: number[] = [];
    for (const r of mem.regions) {
      if (r.fd < 0) throw new VhostUserError('memory region has no fd to share', { guestAddr: r.guestAddr });
      regions.push({ guestAddr: r.guestAddr, size: r.size, userAddr: r.userAddr, mmapOffset: r.fdOffset });
      fds.push(r.fd);
    }
    this.call(Request.SET_MEM_TABLE, { kind: 'memTable', regions }, fds, undefined, this.memTimeout(regions.reduce((n, r) => n + r.size, 0)));
  }
  addMemRegion(region: MemRegion, fd: number): void {
    this.call(Request.ADD_MEM_REG, { kind: 'memRegion', region }, [fd], undefined, this.memTimeout(region.size));
  }
  private memTimeout(bytes: number): number {
    return Math.max(this.timeoutMs, Math.ceil(bytes / 2 ** 30) * MEM_TABLE_MS_PER_GIB);
  }
  removeMemRegion(region: MemRegion): void {
    this.call(Request.REM_MEM_REG, { kind: 'memRegion', region });
  }

  setVringNum(index: number, num: number): void {
    this.call(Request.SET_VRING_NUM, { kind: 'vringState', index, num });
  }
  setVringBase(index: number, base: number): void {
    this.call(Request.SET_VRING_BASE, { kind: 'vringState', index, num: base });
  }
  /** Ring addresses in the front-end's user address space. */
  setVringAddr(index: number, a: { desc: number; avail: number; used: number; log?: number; flags?: number }): void {
    this.call(Request.SET_VRING_ADDR, { kind: 'vringAddr', index, flags: a.flags ?? 0, desc: a.desc, avail: a.avail, used: a.used, log: a.log ?? 0 });
  }
  private vringFile(r: Request, index: number, fd: number | null): void {
    const value = BigInt(index) | (fd === null ? BigInt(VRING_NOFD_MASK) : 0n);
    this.call(r, { kind: 'u64', value }, fd === null ? [] : [fd]);
  }
  setVringKick(index: number, fd: number | null): void {
    this.vringFile(Request.SET_VRING_KICK, index, fd);
  }
  setVringCall(index: number, fd: number | null): void {
    this.vringFile(Request.SET_VRING_CALL, index, fd);
  }
  setVringErr(index: number, fd: number | null): void {
    this.vringFile(Request.SET_VRING_ERR, index, fd);
  }
  setVringEnable(index: number, on: boolean): void {
    this.call(Request.SET_VRING_ENABLE, { kind: 'vringState', index, num: on ? 1 : 0 });
  }
  /** Stops the ring; returns the back-end's next avail index. */
  getVringBase(index: number): number {
    const m = this.call(Request.GET_VRING_BASE, { kind: 'vringState', index, num: 0 }, [], 'vringState');
    const p = m.payload as PayloadOf<'vringState'>;
    if (p.index !== index) throw new VhostUserProtocolError('GET_VRING_BASE reply names another ring', { index, got: p.index });
    return p.num;
  }

  /**
   * Sets up one ring the way Cloud Hypervisor does: NUM, ADDR (guest layout translated to user addresses
   * through `mem`), BASE, CALL, KICK, then ENABLE when protocol features were negotiated.
   */
  setupVring(index: number, mem: GuestMemory, layout: QueueLayout, kickFd: number | null, callFd: number | null, base = 0): void {
    const toUser = (gpa: number) => guestToUser(mem, gpa);
    this.setVringNum(index, layout.size);
    this.setVringAddr(index, { desc: toUser(layout.descAddr), avail: toUser(layout.availAddr), used: toUser(layout.usedAddr) });
    this.setVringBase(index, base);
    this.setVringCall(index, callFd);
    this.setVringKick(index, kickFd);
    if (this.features & F_PROTOCOL_FEATURES) this.setVringEnable(index, true);
  }
}

/** Guest address → front-end user address (the inverse of GuestMemory.userToGuest). */
export function guestToUser(mem: GuestMemory, gpa: number): number {
  for (const r of mem.regions) {
    if (gpa >= r.guestAddr && gpa < r.guestAddr + r.size) return r.userAddr + (gpa - r.guestAddr);
  }
  throw new VhostUserError('guest address is not in any region', { gpa });
}
