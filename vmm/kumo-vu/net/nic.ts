// A virtio-net NIC driven from userspace over vhost-user: RX rings kept full of 2 KiB buffers,
// TX buffers recycled from a free list, interrupts (call eventfds) waited on with epoll.
import { Epoll, EPOLLIN } from '../../../protocol/sys/epoll.js';
import { eventfdRead } from '../../../protocol/sys/fd.js';
import { ProtocolFeature, protocolFeatures } from '../../../protocol/vhost-user/index.js';
import {
  NetConfig, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_SIZE,
  VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, bits,
} from '../../../protocol/virtio/index.js';
import { HANGUP_TOKEN, VuDevice, disconnected, type VuQueue } from '../device.js';
import { KumoVuError } from '../errors.js';
import { DirtyLogProbe } from '../dirty-log-probe.js';

export const BUF_SIZE = 2048;
const HDR = VIRTIO_NET_HDR_SIZE;

export interface NicOptions {
  socket: string;
  queuePairs: number;
  queueSize: number;
  /** Negotiate CSUM + GUEST_CSUM (checksum offload both ways). */
  csumOffload: boolean;
  eventIdx?: boolean;
  connectTimeoutMs?: number;
  /** Log dirty pages as a migrating front-end does (the back-end must offer it): see dirtyLogReport(). */
  dirtyLog?: boolean;
}

/** What the back-end marked while the NIC logged dirty pages: every RX buffer it filled should be. */
export interface DirtyLogReport {
  rxBuffers: number;
  unmarked: number;
}

export interface RxFrame {
  pair: number;
  /** Copy of the frame (without the virtio-net header). */
  frame: Uint8Array;
  /** virtio-net header flags (NEEDS_CSUM / DATA_VALID). */
  flags: number;
}

export interface TxOffload {
  csumStart: number;
  csumOffset: number;
}

interface Pair {
  rx: VuQueue;
  tx: VuQueue;
  rxBufs: number[];
  txBufs: number[];
  txFree: number[];
}

export class NetNic {
  readonly mac: Uint8Array;
  readonly mtu: number;
  private readonly pairs: Pair[] = [];
  private readonly epoll = new Epoll(64);
  private readonly hdr = new Uint8Array(HDR);
  private probe: DirtyLogProbe | null = null;
  private readonly logged: DirtyLogReport = { rxBuffers: 0, unmarked: 0 };

  private constructor(readonly dev: VuDevice, readonly opts: NicOptions) {
    const cfg = dev.readConfig(12);
    const dv = cfg ? new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength) : null;
    this.mac = cfg && dev.has(VIRTIO_NET_F_MAC) ? cfg.slice(0, 6) : randomMac();
    this.mtu = dv && dev.has(VIRTIO_NET_F_MTU) ? dv.getUint16(NetConfig.mtu, true) : 1500;
  }

  static async open(o: NicOptions): Promise<NetNic> {
    const want = bits(
      VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MQ, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
      VIRTIO_RING_F_INDIRECT_DESC, ...(o.eventIdx === false ? [] : [VIRTIO_RING_F_EVENT_IDX]),
      ...(o.csumOffload ? [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM] : []),
    );
    const proto = protocolFeatures(
      ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.CONFIGURE_MEM_SLOTS,
      ...(o.dirtyLog ? [ProtocolFeature.LOG_SHMFD] : []),
    );
    const dev = await VuDevice.connect({ socket: o.socket, features: want, protocolFeatures: proto, connectTimeoutMs: o.connectTimeoutMs ?? 10_000 });
    try {
      if (!dev.has(VIRTIO_F_VERSION_1)) throw new KumoVuError('back-end does not offer VIRTIO_F_VERSION_1');
      const nic = new NetNic(dev, o);
      nic.start();
      if (o.dirtyLog) {
        if (!DirtyLogProbe.offered(dev)) throw new KumoVuError('the back-end does not offer dirty logging (VHOST_F_LOG_ALL with LOG_SHMFD)');
        nic.probe = DirtyLogProbe.start(dev);
      }
      nic.postRx();
      return nic;
    } catch (e) {
      dev.close();
      throw e;
    }
  }

  get csumOffload(): boolean {
    return this.dev.has(VIRTIO_NET_F_CSUM) && this.dev.has(VIRTIO_NET_F_GUEST_CSUM);
  }

  private start(): void {
    const { queuePairs: n, queueSize: qs } = this.opts;
    this.dev.start(2 * n, qs, 2 * n * qs * BUF_SIZE + (1 << 20), `virtio-net: ${n} RX/TX pair(s)`);
    for (let p = 0; p < n; p++) {
      const rx = this.dev.queues[2 * p];
      const tx = this.dev.queues[2 * p + 1];
      const pair: Pair = { rx, tx, rxBufs: [], txBufs: [], txFree: [] };
      for (let i = 0; i < qs; i++) {
        pair.rxBufs.push(this.dev.buffer(BUF_SIZE, 64));
        pair.txBufs.push(this.dev.buffer(BUF_SIZE, 64));
        pair.txFree.push(i);
      }
      this.epoll.add(rx.callFd, EPOLLIN, 2 * p);
      this.epoll.add(tx.callFd, EPOLLIN, 2 * p + 1);
      this.pairs.push(pair);
    }
    // A back-end that goes away ends a bench or a ping with an error, not with a rate over a run it was not there for.
    this.dev.watchHangup(this.epoll);
  }

  /**
   * Hands every RX buffer to the back-end. Done after dirty logging started: a frame the host sends at once would
   * otherwise fill a buffer before the back-end took LOG_ALL, rightly unmarked, and the probe would count it.
   */
  private postRx(): void {
    for (const pair of this.pairs) {
      pair.rxBufs.forEach((addr, i) => pair.rx.dq.add([], [{ addr, len: BUF_SIZE }], i));
      pair.rx.kick();
    }
  }

  get queuePairs(): number {
    return this.pairs.length;
  }

  /** Queues one frame on pair `p` (kicks unless `defer`); false when every TX buffer is in flight. */
  send(p: number, frame: Uint8Array, offload?: TxOffload, defer = false): boolean {
    const pair = this.pairs[p];
    if (frame.length > BUF_SIZE - HDR) throw new KumoVuError('frame larger than a TX buffer', { len: frame.length });
    this.reclaimTx(pair);
    const i = pair.txFree.pop();
    if (i === undefined) return false;
    const mem = this.dev.mem!;
    const h = this.hdr;
    h.fill(0);
    if (offload) {
      h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
      h[6] = offload.csumStart & 0xff;
      h[7] = offload.csumStart >> 8;
      h[8] = offload.csumOffset & 0xff;
      h[9] = offload.csumOffset >> 8;
    }
    mem.write(pair.txBufs[i], h);
    mem.write(pair.txBufs[i] + HDR, frame);
    pair.tx.dq.add([{ addr: pair.txBufs[i], len: HDR + frame.length }], [], i);
    if (!defer) pair.tx.kick();
    return true;
  }

  /** Kicks the TX queue of pair p (after deferred sends). */
  flush(p: number): void {
    this.pairs[p].tx.kick();
  }

  /** TX buffers the back-end has consumed go back to the free list; returns how many. */
  reclaimTx(pair: Pair | number): number {
    const pr = typeof pair === 'number' ? this.pairs[pair] : pair;
    const used = pr.tx.dq.takeUsed();
    for (const u of used) pr.txFree.push(u.token);
    return used.length;
  }

  /** Frames received on any pair so far (buffers are re-posted). */
  receive(max = Infinity): RxFrame[] {
    const out: RxFrame[] = [];
    const mem = this.dev.mem!;
    for (let p = 0; p < this.pairs.length && out.length < max; p++) {
      const pair = this.pairs[p];
      const used = pair.rx.dq.takeUsed(max - out.length);
      for (const u of used) {
        const addr = pair.rxBufs[u.token];
        if (this.probe !== null) {
          this.logged.rxBuffers++;
          if (!this.probe.marked(addr) || !this.probe.marked(addr + Math.max(0, u.len - 1))) this.logged.unmarked++;
        }
        if (u.len >= HDR) {
          const b = new Uint8Array(u.len);
          mem.read(addr, b);
          // 2 KiB buffers hold any MTU-sized frame, so num_buffers is 1 here.
          out.push({ pair: p, frame: b.subarray(HDR), flags: b[0] });
        }
        pair.rx.dq.add([], [{ addr, len: BUF_SIZE }], u.token);
      }
      if (used.length > 0) pair.rx.kick();
    }
    return out;
  }

  /** RX buffers the back-end filled while the NIC logged dirty pages, and how many of them it left unmarked; null: not logging. */
  dirtyLogReport(): DirtyLogReport | null {
    return this.probe === null ? null : { ...this.logged };
  }

  /** Counts (and recycles) received frames without copying them; for benchmarks. */
  drainRx(p: number): number {
    const pair = this.pairs[p];
    const used = pair.rx.dq.takeUsed();
    for (const u of used) pair.rx.dq.add([], [{ addr: pair.rxBufs[u.token], len: BUF_SIZE }], u.token);
    if (used.length > 0) pair.rx.kick();
    return used.length;
  }

  /** Writes `frame` (with a plain header) into every TX buffer of pair p, for sendPrepared(). */
  prepareTx(p: number, frame: Uint8Array): void {
    const pair = this.pairs[p];
    const mem = this.dev.mem!;
    const b = new Uint8Array(HDR + frame.length);
    b.set(frame, HDR);
    for (const a of pair.txBufs) mem.write(a, b);
  }

  /** Re-sends the prepared frame from every free TX buffer; returns how many were queued. */
  sendPrepared(p: number, frameLen: number): number {
    const pair = this.pairs[p];
    this.reclaimTx(pair);
    let n = 0;
    let i: number | undefined;
    while ((i = pair.txFree.pop()) !== undefined) {
      pair.tx.dq.add([{ addr: pair.txBufs[i], len: HDR + frameLen }], [], i);
      n++;
    }
    if (n > 0) pair.tx.kick();
    return n;
  }

  /** Blocks until some queue signals (or timeoutMs); drains the signalled call eventfds. */
  wait(timeoutMs: number): void {
    const n = this.epoll.wait(timeoutMs);
    for (let i = 0; i < n; i++) {
      const t = this.epoll.tokens[i];
      if (t === HANGUP_TOKEN) throw disconnected({});
      const pair = this.pairs[t >> 1];
      eventfdRead(t & 1 ? pair.tx.callFd : pair.rx.callFd);
    }
  }

  close(): void {
    try {
      this.probe?.stop();
    } catch {
      // the back-end is gone: nothing to turn off
    }
    this.probe = null;
    this.epoll.close();
    this.dev.close();
  }
}

function randomMac(): Uint8Array {
  const m = new Uint8Array(6);
  for (let i = 0; i < 6; i++) m[i] = Math.floor(Math.random() * 256);
  m[0] = (m[0] & 0xfe) | 0x02;
  return m;
}
