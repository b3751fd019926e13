// Just enough of an IPv4 host on top of NetNic: ARP (resolve and answer), ICMP echo, UDP.
import { KumoVuError } from '../errors.js';
import {
  BROADCAST, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETH_HLEN, IPPROTO_ICMP, IPPROTO_UDP, IPV4_HLEN, arp, ethernet, icmpEcho, ipv4,
  ipv4String, macString, parseFrame, sameBytes, udp, type ParsedFrame,
} from './frames.js';
import type { NetNic } from './nic.js';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../../protocol/virtio/index.js';

export interface Received {
  frame: ParsedFrame;
  pair: number;
}

export class MiniStack {
  private readonly neighbours = new Map<string, Uint8Array>();
  private ipId = 1;
  /** Frames that no waiter took (for the caller's inspection). */
  readonly stray: Received[] = [];

  constructor(readonly nic: NetNic, readonly ip: Uint8Array) {}

  /** Receives for up to timeoutMs, answering ARP requests for our address, until `match` accepts a frame. */
  waitFor(match: (r: Received) => boolean, timeoutMs: number): Received | null {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const rx of this.nic.receive()) {
        const f = parseFrame(rx.frame, (rx.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0);
        if (f === null) continue;
        const r = { frame: f, pair: rx.pair };
        this.learn(f);
        if (f.arp && f.arp.op === 1 && sameBytes(f.arp.targetIp, this.ip)) this.answerArp(f, rx.pair);
        if (match(r)) return r;
        if (this.stray.length < 64) this.stray.push(r);
      }
      const left = deadline - Date.now();
      if (left <= 0) return null;
      this.nic.wait(Math.min(left, 50));
    }
  }

  private learn(f: ParsedFrame): void {
    if (f.arp) this.neighbours.set(ipv4String(f.arp.senderIp), f.arp.senderMac.slice());
  }

  private answerArp(f: ParsedFrame, pair: number): void {
    const a = f.arp!;
    this.nic.send(pair, ethernet(a.senderMac, this.nic.mac, ETHERTYPE_ARP, arp(2, this.nic.mac, this.ip, a.senderMac, a.senderIp)));
  }

  /** ARP who-has `target`; returns its MAC. */
  resolve(target: Uint8Array, timeoutMs = 2000, pair = 0): Uint8Array {
    const key = ipv4String(target);
    const known = this.neighbours.get(key);
    if (known) return known;
    this.nic.send(pair, ethernet(BROADCAST, this.nic.mac, ETHERTYPE_ARP, arp(1, this.nic.mac, this.ip, new Uint8Array(6), target)));
    const r = this.waitFor((x) => !!x.frame.arp && x.frame.arp.op === 2 && sameBytes(x.frame.arp.senderIp, target), timeoutMs);
    if (r === null) {
      throw new KumoVuError(`no ARP reply from ${key} (asked as ${ipv4String(this.ip)}) within ${timeoutMs} ms: is that the back-end's ip= (--to)?`, { target: key, timeoutMs });
    }
    return r.frame.arp!.senderMac.slice();
  }

  /** One ICMP echo round trip; returns the RTT in ms, or null on timeout. */
  ping(target: Uint8Array, seq: number, opts: { id?: number; size?: number; timeoutMs?: number; pair?: number } = {}): number | null {
    const pair = opts.pair ?? 0;
    const mac = this.resolve(target, opts.timeoutMs ?? 2000, pair);
    const id = opts.id ?? (process.pid & 0xffff);
    const data = new Uint8Array(opts.size ?? 56).map((_, i) => i & 0xff);
    const pkt = ipv4(this.ip, target, IPPROTO_ICMP, icmpEcho(8, id, seq, data), this.ipId++);
    const t0 = process.hrtime.bigint();
    this.nic.send(pair, ethernet(mac, this.nic.mac, ETHERTYPE_IPV4, pkt));
    const r = this.waitFor((x) => {
      const i = x.frame.icmp;
      return !!i && i.type === 0 && i.id === id && i.seq === seq && sameBytes(x.frame.ip!.src, target);
    }, opts.timeoutMs ?? 2000);
    if (r === null) return null;
    const f = r.frame;
    if (!f.ip!.headerOk || !f.icmp!.checksumOk) throw new KumoVuError('echo reply with a bad checksum', { seq });
    if (!sameBytes(f.icmp!.data, data)) throw new KumoVuError('echo reply data differs', { seq });
    return Number(process.hrtime.bigint() - t0) / 1e6;
  }

  /** Sends one UDP datagram; with checksum offload the device finishes the checksum. */
  sendUdp(target: Uint8Array, sport: number, dport: number, data: Uint8Array, pair = 0): void {
    const mac = this.resolve(target, 2000, pair);
    const offload = this.nic.csumOffload;
    const pkt = ipv4(this.ip, target, IPPROTO_UDP, udp(this.ip, target, sport, dport, data, offload), this.ipId++);
    const frame = ethernet(mac, this.nic.mac, ETHERTYPE_IPV4, pkt);
    this.nic.send(pair, frame, offload ? { csumStart: ETH_HLEN + IPV4_HLEN, csumOffset: 6 } : undefined);
  }

  /** Waits for a UDP datagram to `dport`; throws on a bad checksum. */
  receiveUdp(dport: number, timeoutMs: number): { data: Uint8Array; from: string; sport: number; pair: number; partial: boolean } | null {
    const r = this.waitFor((x) => !!x.frame.udp && x.frame.udp.dport === dport, timeoutMs);
    if (r === null) return null;
    const f = r.frame;
    if (!f.ip!.headerOk || !f.udp!.checksumOk) throw new KumoVuError('UDP datagram with a bad checksum', { from: ipv4String(f.ip!.src) });
    return { data: f.udp!.data.slice(), from: ipv4String(f.ip!.src), sport: f.udp!.sport, pair: r.pair, partial: false };
  }

  describe(): string {
    return `mac ${macString(this.nic.mac)} ip ${ipv4String(this.ip)}`;
  }
}
