// Ethernet / ARP / IPv4 / ICMP / UDP frames built and parsed by hand, with their checksums.
import { KumoVuError } from '../errors.js';

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const IPPROTO_ICMP = 1;
export const IPPROTO_UDP = 17;
export const ETH_HLEN = 14;
export const IPV4_HLEN = 20;
export const UDP_HLEN = 8;
export const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

export function ipv4Bytes(s: string): Uint8Array {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new KumoVuError('invalid IPv4 address', { value: s });
  return Uint8Array.from(p);
}

export const ipv4String = (b: Uint8Array): string => Array.from(b.subarray(0, 4)).join('.');
export const macString = (b: Uint8Array): string => Array.from(b.subarray(0, 6), (x) => x.toString(16).padStart(2, '0')).join(':');

/** Ones'-complement sum of `b` folded to 16 bits, starting from `sum` (not inverted). */
export function onesSum(b: Uint8Array, sum = 0): number {
  let s = sum;
  const n = b.length & ~1;
  for (let i = 0; i < n; i += 2) s += (b[i] << 8) | b[i + 1];
  if (b.length & 1) s += b[b.length - 1] << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

export const checksum = (b: Uint8Array, sum = 0): number => ~onesSum(b, sum) & 0xffff;

function pseudoSum(src: Uint8Array, dst: Uint8Array, proto: number, len: number): number {
  const p = new Uint8Array(12);
  p.set(src, 0);
  p.set(dst, 4);
  p[9] = proto;
  p[10] = len >> 8;
  p[11] = len & 0xff;
  return onesSum(p);
}

export function ethernet(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(ETH_HLEN + payload.length);
  f.set(dst.subarray(0, 6), 0);
  f.set(src.subarray(0, 6), 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  f.set(payload, ETH_HLEN);
  return f;
}

/** ARP for IPv4 over Ethernet: op 1 request, 2 reply. */
export function arp(op: 1 | 2, senderMac: Uint8Array, senderIp: Uint8Array, targetMac: Uint8Array, targetIp: Uint8Array): Uint8Array {
  const a = new Uint8Array(28);
  a.set([0, 1, 8, 0, 6, 4, 0, op]);
  a.set(senderMac.subarray(0, 6), 8);
  a.set(senderIp, 14);
  a.set(targetMac.subarray(0, 6), 18);
  a.set(targetIp, 24);
  return a;
}

export function ipv4(src: Uint8Array, dst: Uint8Array, proto: number, payload: Uint8Array, id = 0): Uint8Array {
  const total = IPV4_HLEN + payload.length;
  if (total > 0xffff) throw new KumoVuError('IPv4 packet too long', { total });
  const p = new Uint8Array(total);
  p[0] = 0x45;
  p[2] = total >> 8;
  p[3] = total & 0xff;
  p[4] = (id >> 8) & 0xff;
  p[5] = id & 0xff;
  p[6] = 0x40; // don't fragment
  p[8] = 64;
  p[9] = proto;
  p.set(src, 12);
  p.set(dst, 16);
  const c = checksum(p.subarray(0, IPV4_HLEN));
  p[10] = c >> 8;
  p[11] = c & 0xff;
  p.set(payload, IPV4_HLEN);
  return p;
}

export function icmpEcho(type: 0 | 8, id: number, seq: number, data: Uint8Array): Uint8Array {
  const m = new Uint8Array(8 + data.length);
  m[0] = type;
  m[4] = id >> 8;
  m[5] = id & 0xff;
  m[6] = seq >> 8;
  m[7] = seq & 0xff;
  m.set(data, 8);
  const c = checksum(m);
  m[2] = c >> 8;
  m[3] = c & 0xff;
  return m;
}

/**
 * A UDP datagram. `partial`: leave only the pseudo-header sum in the checksum field for the device
 * to finish (virtio-net NEEDS_CSUM / CHECKSUM_PARTIAL); otherwise compute the full checksum.
 */
export function udp(src: Uint8Array, dst: Uint8Array, sport: number, dport: number, data: Uint8Array, partial = false): Uint8Array {
  const len = UDP_HLEN + data.length;
  const u = new Uint8Array(len);
  u[0] = sport >> 8;
  u[1] = sport & 0xff;
  u[2] = dport >> 8;
  u[3] = dport & 0xff;
  u[4] = len >> 8;
  u[5] = len & 0xff;
  u.set(data, UDP_HLEN);
  const ps = pseudoSum(src, dst, IPPROTO_UDP, len);
  let c: number;
  if (partial) c = ps;
  else {
    c = checksum(u, ps);
    if (c === 0) c = 0xffff;
  }
  u[6] = c >> 8;
  u[7] = c & 0xff;
  return u;
}

export interface ParsedFrame {
  dst: Uint8Array;
  src: Uint8Array;
  type: number;
  arp?: { op: number; senderMac: Uint8Array; senderIp: Uint8Array; targetMac: Uint8Array; targetIp: Uint8Array };
  ip?: { src: Uint8Array; dst: Uint8Array; proto: number; ttl: number; headerOk: boolean; payload: Uint8Array };
  icmp?: { type: number; code: number; id: number; seq: number; data: Uint8Array; checksumOk: boolean };
  udp?: { sport: number; dport: number; data: Uint8Array; checksum: number; checksumOk: boolean };
}

/** Parses what kumo-vu understands; `udpChecksumPartial` when the device said NEEDS_CSUM (checksum not final). */
export function parseFrame(f: Uint8Array, udpChecksumPartial = false): ParsedFrame | null {
  if (f.length < ETH_HLEN) return null;
  const out: ParsedFrame = { dst: f.subarray(0, 6), src: f.subarray(6, 12), type: (f[12] << 8) | f[13] };
  const p = f.subarray(ETH_HLEN);
  if (out.type === ETHERTYPE_ARP && p.length >= 28) {
    out.arp = { op: (p[6] << 8) | p[7], senderMac: p.subarray(8, 14), senderIp: p.subarray(14, 18), targetMac: p.subarray(18, 24), targetIp: p.subarray(24, 28) };
  } else if (out.type === ETHERTYPE_IPV4 && p.length >= IPV4_HLEN && p[0] >> 4 === 4) {
    const ihl = (p[0] & 0xf) * 4;
    const total = (p[2] << 8) | p[3];
    if (ihl < IPV4_HLEN || total < ihl || total > p.length) return out;
    const payload = p.subarray(ihl, total);
    const ip = { src: p.subarray(12, 16), dst: p.subarray(16, 20), proto: p[9], ttl: p[8], headerOk: checksum(p.subarray(0, ihl)) === 0, payload };
    out.ip = ip;
    if (ip.proto === IPPROTO_ICMP && payload.length >= 8) {
      out.icmp = {
        type: payload[0], code: payload[1], id: (payload[4] << 8) | payload[5], seq: (payload[6] << 8) | payload[7],
        data: payload.subarray(8), checksumOk: checksum(payload) === 0,
      };
    } else if (ip.proto === IPPROTO_UDP && payload.length >= UDP_HLEN) {
      const len = (payload[4] << 8) | payload[5];
      const u = payload.subarray(0, Math.min(len, payload.length));
      const cs = (u[6] << 8) | u[7];
      const ps = pseudoSum(ip.src, ip.dst, IPPROTO_UDP, u.length);
      // NEEDS_CSUM: the field holds the pseudo-header sum; the data sum completes it.
      const ok = udpChecksumPartial ? cs === ps : cs === 0 || checksum(u, ps) === 0;
      out.udp = { sport: (u[0] << 8) | u[1], dport: (u[2] << 8) | u[3], data: u.subarray(UDP_HLEN), checksum: cs, checksumOk: ok };
    }
  }
  return out;
}

export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
