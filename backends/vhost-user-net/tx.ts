// Guest → TAP. Each chain's readable segments (virtio-net header + frame) go to the TAP with one
// writev whose iovecs point into guest memory; the TAP parses the header itself (IFF_VNET_HDR).
import type { GuestMemory } from '../../protocol/memory/index.js';
import type { DescriptorChain } from '../../protocol/virtqueue/chain.js';
import { ChainError } from '../../protocol/virtqueue/errors.js';
import { IoVecList, writev } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { COUNTER } from './counters.js';
import { HostAddrs } from './host-addr.js';
import { PassResult, type NetQueue } from './net-queue.js';
import {
  VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
} from '../../protocol/virtio/net.js';
import { ETH_HLEN, MAX_GSO_FRAME, NET_HDR_LEN } from './virtio-net.js';

const IOV_MAX = 1024;

export interface TxOptions {
  hdrLen: number;
  /** Largest frame without GSO (MTU + Ethernet + VLAN headers). */
  maxFrame: number;
  /** Offloads the guest may ask for in its headers (from the acked features). */
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  ecn: boolean;
  ufo: boolean;
}

export class TxPath {
  private readonly iov = new IoVecList(IOV_MAX);
  private readonly hosts = new HostAddrs();
  private opts: TxOptions = { hdrLen: NET_HDR_LEN, maxFrame: 1518, csum: false, tso4: false, tso6: false, ecn: false, ufo: false };
  /** A chain whose write would have blocked; retried first once the TAP is writable. */
  private blocked: DescriptorChain | null = null;

  constructor(private readonly tapFd: number, private readonly c: Float64Array) {}

  configure(opts: TxOptions): void {
    this.opts = opts;
  }

  get isBlocked(): boolean {
    return this.blocked !== null;
  }

  /** Sends up to `budget` chains to the TAP and publishes them as used. */
  run(q: NetQueue, mem: GuestMemory, budget: number): { result: PassResult; published: number } {
    const c = this.c;
    let done = 0;
    let published = 0;
    let result: PassResult = PassResult.Budget;
    q.disableNotifications();
    while (done < budget) {
      let chain = this.blocked;
      this.blocked = null;
      if (chain === null) {
        try {
          chain = q.pop();
        } catch (e) {
          if (!(e instanceof ChainError)) throw e;
          c[COUNTER.txBadChain]++;
          c[COUNTER.txDropped]++;
          if (q.returnMalformed(e)) published++;
          continue;
        }
        if (chain === null) {
          if (q.enableNotifications()) {
            q.disableNotifications();
            continue;
          }
          result = PassResult.Drained;
          break;
        }
      }
      if (!this.send(chain, mem)) {
        this.blocked = chain;
        c[COUNTER.txBlocked]++;
        result = PassResult.Blocked;
        break;
      }
      q.pushUsed(chain.head, 0);
      published++;
      done++;
    }
    if (published > 0) q.publishUsed();
    return { result, published };
  }

  /** Forgets a blocked chain: the ring is stopping and the avail index is rewound over it. */
  release(q: NetQueue): void {
    if (this.blocked !== null) q.nextAvailIdx = (q.nextAvailIdx - 1) & 0xffff;
    this.blocked = null;
  }

  /** Writes one chain to the TAP; false if the TAP would block. Bad chains are counted and consumed. */
  private send(chain: DescriptorChain, mem: GuestMemory): boolean {
    const c = this.c;
    const { hdrLen } = this.opts;
    const segs = chain.readable;
    const frameLen = chain.readableLength - hdrLen;
    if (frameLen < ETH_HLEN) {
      c[chain.readableLength === 0 && chain.writableLength > 0 ? COUNTER.txBadChain : COUNTER.txRunt]++;
      c[COUNTER.txDropped]++;
      return true;
    }
    const gso = this.checkHeader(chain, mem, frameLen);
    if (gso < 0) {
      c[COUNTER.txDropped]++;
      return true;
    }
    if (segs.length > IOV_MAX) {
      c[COUNTER.txBadChain]++;
      c[COUNTER.txDropped]++;
      return true;
    }
    const iov = this.iov;
    iov.clear();
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i];
      const a = this.hosts.resolve(mem, s.addr, s.len);
      if (a < 0) {
        c[COUNTER.txBadChain]++;
        c[COUNTER.txDropped]++;
        return true;
      }
      iov.push(a, s.len);
    }
    let n: number;
    try {
      n = writev(this.tapFd, iov);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
      // The kernel refused the frame (EINVAL: header it cannot honour, EFAULT, ...).
      c[COUNTER.txRejected]++;
      c[COUNTER.txDropped]++;
      return true;
    }
    if (n < 0) return false;
    c[COUNTER.txFrames]++;
    c[COUNTER.txBytes] += frameLen;
    return true;
  }

  /** Checks the virtio-net header against what was negotiated; returns its gso type or -1 (counted). */
  private checkHeader(chain: DescriptorChain, mem: GuestMemory, frameLen: number): number {
    const c = this.c;
    const o = this.opts;
    const s0 = chain.readable[0];
    let flags: number;
    let gsoType: number;
    let csumStart = 0;
    let csumOffset = 0;
    if (s0.len >= 10) {
      const v = mem.readU16(s0.addr);
      flags = v & 0xff;
      gsoType = v >> 8;
      if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
        csumStart = mem.readU16(s0.addr + 6);
        csumOffset = mem.readU16(s0.addr + 8);
      }
    } else {
      const h = new Uint8Array(10);
      let off = 0;
      for (const s of chain.readable) {
        if (off >= 10) break;
        const m = Math.min(s.len, 10 - off);
        mem.read(s.addr, h.subarray(off, off + m));
        off += m;
      }
      flags = h[0];
      gsoType = h[1];
      csumStart = h[6] | (h[7] << 8);
      csumOffset = h[8] | (h[9] << 8);
    }
    if (flags === 0 && gsoType === VIRTIO_NET_HDR_GSO_NONE) {
      if (frameLen > o.maxFrame) {
        c[COUNTER.txOversized]++;
        return -1;
      }
      return 0;
    }
    if ((flags & ~(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) !== 0) return this.bad();
    if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
      if (!o.csum || csumStart + csumOffset + 2 > frameLen) return this.bad();
    }
    const base = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    if (gsoType & VIRTIO_NET_HDR_GSO_ECN && !o.ecn) return this.bad();
    switch (base) {
      case VIRTIO_NET_HDR_GSO_NONE:
        if (gsoType !== VIRTIO_NET_HDR_GSO_NONE) return this.bad();
        if (frameLen > o.maxFrame) {
          c[COUNTER.txOversized]++;
          return -1;
        }
        return 0;
      case VIRTIO_NET_HDR_GSO_TCPV4:
        if (!o.tso4) return this.bad();
        break;
      case VIRTIO_NET_HDR_GSO_TCPV6:
        if (!o.tso6) return this.bad();
        break;
      case VIRTIO_NET_HDR_GSO_UDP:
        if (!o.ufo) return this.bad();
        break;
      default:
        return this.bad();
    }
    if (frameLen > MAX_GSO_FRAME) {
      c[COUNTER.txOversized]++;
      return -1;
    }
    return base;
  }

  private bad(): number {
    this.c[COUNTER.txBadHeader]++;
    return -1;
  }
}
