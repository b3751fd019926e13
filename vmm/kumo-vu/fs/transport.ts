import { bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../../protocol/virtio/features.js';
import { protocolFeatures, ProtocolFeature } from '../../../protocol/vhost-user/index.js';
import type { FuseTransport } from '../../../protocol/fuse/index.js';
import { Epoll, EPOLLIN, EPOLLRDHUP } from '../../../protocol/sys/epoll.js';
import { eventfdRead } from '../../../protocol/sys/fd.js';
import { schedYield } from '../../../protocol/sys/proc.js';
import { KumoVuError } from '../errors.js';
import { VuDevice } from '../device.js';
import type { Segment } from '../../../protocol/virtqueue/layout.js';

/** Request and reply buffer of one slot: a 1 MiB WRITE/READ plus headers. */
const SLOT = (1 << 20) + 8192;
/** Request buffer of a hiprio slot: FORGET, INTERRUPT, a BATCH_FORGET of 4k entries (no replies). */
const HIPRIO_SLOT = 64 << 10;
const TIMEOUT_MS = 30_000;
/**
 * KUMO_VU_SPIN_US: poll the used rings this long (yielding the CPU between looks) before sleeping on
 * the call eventfds. Off by default: a guest takes interrupts too, and waking costs both back-ends
 * alike. On this 2-vCPU host a wakeup is about 100 µs, as much as a 1 MiB copy; polling takes it out
 * of the measurement (at the price of a busy CPU).
 */
const SPIN_MS = Math.max(0, Number(process.env.KUMO_VU_SPIN_US ?? 0)) / 1000;
/** Epoll token of the vhost-user socket (queue tokens are ring indices). */
const SOCKET_TOKEN = 0xffff;

/** A slot's buffers in guest memory, for raw use (see VirtioFsTransport.rawSlots). */
export interface RawSlot {
  /** Chain token: the slot's index. */
  readonly token: number;
  /** Queue 0 (FORGET, INTERRUPT; no reply space) instead of the request queue. */
  readonly hiprio: boolean;
  readonly request: Uint8Array;
  readonly reply: Uint8Array;
}

interface Slot {
  /** Token of the chain: index in `slots`. */
  token: number;
  hiprio: boolean;
  reqAddr: number;
  repAddr: number;
  replySize: number;
  /** Segment lists reused for every chain of the slot (DriverQueue.add reads them at once). */
  readSeg: Segment[];
  writeSeg: Segment[];
  resolve: (b: Uint8Array) => void;
  reject: (e: Error) => void;
}

/**
 * FUSE over virtio-fs queues from userspace: queue 0 (hiprio) for FORGET/INTERRUPT, queue 1 for the
 * rest. Up to `depth` requests are in flight on each queue (a guest does not wait for one FORGET to be
 * consumed before queueing the next): calls made in the same turn of the event loop are published with
 * one avail-index store and at most one kick per queue, and one wait collects every reply that is ready.
 *
 * A reply is a view of the slot's buffer in "guest" memory, valid until control returns to the event
 * loop (FuseClient decodes or copies it right away).
 */
export class VirtioFsTransport implements FuseTransport {
  private readonly slots: Slot[] = [];
  /** Free slots of the request queue [0] and of the hiprio queue [1]. */
  private readonly free: [Slot[], Slot[]] = [[], []];
  private readonly waiting: { hiprio: boolean; go: () => void }[] = [];
  private readonly dirty = [false, false];
  private inFlight = 0;
  private pumpScheduled = false;
  private readonly epoll = new Epoll(4);
  private closed = false;
  /** Set once the back-end hung up or stopped answering: every later call fails with it. */
  private broken: KumoVuError | null = null;

  private constructor(
    readonly dev: VuDevice,
    readonly depth: number,
  ) {
    const slot = (token: number, hiprio: boolean): Slot => {
      const reqAddr = dev.buffer(hiprio ? HIPRIO_SLOT : SLOT, 4096);
      const repAddr = hiprio ? 0 : dev.buffer(SLOT, 4096);
      return {
        token, hiprio, reqAddr, repAddr, replySize: 0, resolve: noop, reject: noop,
        readSeg: [{ addr: reqAddr, len: 0 }], writeSeg: [{ addr: repAddr, len: 0 }],
      };
    };
    for (let i = 0; i < 2 * depth; i++) this.slots.push(slot(i, i >= depth));
    for (const s of this.slots) this.free[s.hiprio ? 1 : 0].push(s);
    for (const q of dev.queues) this.epoll.add(q.callFd, EPOLLIN, q.index);
    // A back-end that dies closes the socket: notice that instead of waiting out TIMEOUT_MS.
    this.epoll.add(dev.frontend.channel.fd, EPOLLRDHUP, SOCKET_TOKEN);
  }

  /** `tag`: the tag the back-end must report in its config space, when it offers one (CONFIG); else an error. */
  static async connect(socket: string, connectTimeoutMs = 0, queueSize = 256, depth = 1, tag?: string): Promise<VirtioFsTransport> {
    if (!Number.isInteger(depth) || depth < 1 || depth > Math.min(64, queueSize)) throw new KumoVuError('queue depth out of range', { depth, queueSize });
    const dev = await VuDevice.connect({
      socket,
      features: bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC),
      protocolFeatures: protocolFeatures(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.CONFIG),
      connectTimeoutMs,
    });
    try {
      if (tag !== undefined) {
        // virtio-fs config: tag[36] (NUL-padded), num_request_queues u32.
        const raw = dev.readConfig(40);
        if (raw !== null) {
          const end = raw.subarray(0, 36).indexOf(0);
          const theirs = new TextDecoder().decode(raw.subarray(0, end < 0 ? 36 : end));
          if (theirs !== tag) throw new KumoVuError(`the back-end's tag is ${JSON.stringify(theirs)}, not ${JSON.stringify(tag)}`, { socket });
        }
      }
      dev.start(2, queueSize, depth * (2 * SLOT + HIPRIO_SLOT) + (8 << 20), 'virtio-fs: hiprio and a request queue');
      return new VirtioFsTransport(dev, depth);
    } catch (e) {
      dev.close();
      throw e;
    }
  }

  get mem() {
    const m = this.dev.mem;
    if (m === null) throw new KumoVuError('device not started');
    return m;
  }

  async call(request: Uint8Array, replySize: number, hiprio = false): Promise<Uint8Array> {
    checkFits(hiprio, request.length, replySize);
    if (this.closed) throw new KumoVuError('transport closed');
    if (this.broken) throw this.broken;
    const slot = await this.takeSlot(hiprio);
    if (this.broken) {
      this.giveSlot(slot);
      throw this.broken;
    }
    this.mem.write(slot.reqAddr, request);
    slot.replySize = replySize;
    if (!this.enqueue(slot, request.length, replySize)) {
      this.giveSlot(slot);
      throw new KumoVuError('virtqueue full');
    }
    this.inFlight++;
    const reply = new Promise<Uint8Array>((resolve, reject) => {
      slot.resolve = resolve;
      slot.reject = reject;
    });
    this.schedulePump();
    return reply;
  }

  private takeSlot(hiprio: boolean): Promise<Slot> | Slot {
    if (this.free[hiprio ? 1 : 0].length > 0) return this.grab(hiprio);
    return new Promise<Slot>((resolve) => this.waiting.push({ hiprio, go: () => resolve(this.grab(hiprio)) }));
  }

  private grab(hiprio: boolean): Slot {
    return this.free[hiprio ? 1 : 0].shift()!;
  }

  private giveSlot(s: Slot): void {
    this.free[s.hiprio ? 1 : 0].push(s);
    const i = this.waiting.findIndex((w) => w.hiprio === s.hiprio);
    if (i >= 0) this.waiting.splice(i, 1)[0].go();
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    // After the microtasks of this turn: every request issued in it goes out with one kick.
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Publishes and kicks what was added, then blocks until at least one reply is back and hands those out. */
  private pump(): void {
    if (this.closed || this.broken) return;
    if (this.inFlight === 0) {
      this.kickDirty();
      return;
    }
    const err = this.collect(this.onUsed);
    if (err !== null) {
      this.fail(err);
      return;
    }
    if (this.inFlight > 0) this.schedulePump();
  }

  private readonly onUsed = (token: number, len: number): void => this.complete(token, len);

  private kickDirty(): void {
    for (const q of this.dev.queues) {
      if (this.dirty[q.index]) {
        this.dirty[q.index] = false;
        q.kick();
      }
    }
  }

  /** Kicks, then blocks until at least one used chain is back and hands each to onUsed; the error if none came. */
  private collect(onUsed: (token: number, len: number) => void): KumoVuError | null {
    this.kickDirty();
    const deadline = Date.now() + TIMEOUT_MS;
    const spinUntil = SPIN_MS > 0 ? performance.now() + SPIN_MS : 0;
    let hungUp = false;
    for (;;) {
      let got = 0;
      for (const q of this.dev.queues) got += q.dq.drainUsed(onUsed);
      if (got > 0) return null;
      if (hungUp) {
        const inFlight = this.dev.queues.reduce((n, q) => n + q.dq.inFlight, 0);
        return new KumoVuError('the vhost-user back-end disconnected', { inFlight });
      }
      if (spinUntil > 0 && performance.now() < spinUntil) {
        schedYield();
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0) return new KumoVuError('timed out waiting for the device', { timeoutMs: TIMEOUT_MS });
      const n = this.epoll.wait(Math.min(left, 100));
      for (let i = 0; i < n; i++) {
        const t = this.epoll.tokens[i];
        // Replies published before the hang-up are still collected (one more pass above).
        if (t === SOCKET_TOKEN) hungUp = true;
        else eventfdRead(this.dev.queues[t].callFd);
      }
    }
  }

  /**
   * The slots as raw buffers, for a caller that writes FUSE requests into them itself (`kumo-vu fs bench`,
   * with protocol/fuse/raw.ts): no promise or copy per request. Only while no call() is in flight.
   */
  rawSlots(): RawSlot[] {
    if (this.inFlight > 0) throw new KumoVuError('raw use of the slots while calls are in flight', { inFlight: this.inFlight });
    return this.slots.map((s) => ({
      token: s.token,
      hiprio: s.hiprio,
      request: this.mem.slice(s.reqAddr, s.hiprio ? HIPRIO_SLOT : SLOT),
      reply: s.hiprio ? EMPTY : this.mem.slice(s.repAddr, SLOT),
    }));
  }

  /** Queues the `reqLen` bytes written into slot.request, with `replyLen` bytes of reply space; sent by rawWait(). */
  rawSubmit(slot: RawSlot, reqLen: number, replyLen: number): void {
    if (this.broken) throw this.broken;
    checkFits(slot.hiprio, reqLen, replyLen);
    if (!this.enqueue(this.slots[slot.token], reqLen, replyLen)) throw new KumoVuError('virtqueue full');
  }

  /** Adds slot s's chain (reqLen request bytes, replyLen bytes of reply space) to its queue; false when full. */
  private enqueue(s: Slot, reqLen: number, replyLen: number): boolean {
    s.readSeg[0].len = reqLen;
    s.writeSeg[0].len = replyLen;
    const q = this.dev.queues[s.hiprio ? 0 : 1];
    if (q.dq.add(s.readSeg, replyLen > 0 ? s.writeSeg : NO_SEGMENTS, s.token) === null) return false;
    this.dirty[q.index] = true;
    return true;
  }

  /** Sends what rawSubmit() queued and blocks until at least one chain is back: onUsed(token, usedLen) for each. */
  rawWait(onUsed: (token: number, len: number) => void): void {
    if (this.broken) throw this.broken;
    const err = this.collect(onUsed);
    if (err !== null) {
      this.broken = err;
      throw err;
    }
  }

  private complete(token: number, usedLen: number): void {
    const slot = this.slots[token];
    this.inFlight--;
    const len = Math.min(usedLen, slot.replySize);
    const reply = len > 0 ? this.mem.slice(slot.repAddr, len) : EMPTY;
    const resolve = slot.resolve;
    slot.resolve = noop;
    slot.reject = noop;
    this.giveSlot(slot);
    resolve(reply);
  }

  private fail(e: KumoVuError): void {
    this.broken = e;
    this.failAll(e);
    // Requests waiting for a slot would never get one.
    for (const w of this.waiting.splice(0)) w.go();
  }

  private failAll(e: Error): void {
    for (const s of this.slots) {
      const reject = s.reject;
      s.resolve = noop;
      s.reject = noop;
      reject(e);
    }
    this.inFlight = 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.failAll(new KumoVuError('transport closed'));
    this.epoll.close();
    this.dev.close();
  }
}

/** A request and reply that fit a slot of that queue (hiprio chains have no reply space). */
function checkFits(hiprio: boolean, reqLen: number, replyLen: number): void {
  if (reqLen > (hiprio ? HIPRIO_SLOT : SLOT) || replyLen > (hiprio ? 0 : SLOT)) {
    throw new KumoVuError('FUSE request too large', { len: reqLen, replySize: replyLen, hiprio });
  }
}

const EMPTY = new Uint8Array(0);
const NO_SEGMENTS: Segment[] = [];
const noop = (): void => {};
