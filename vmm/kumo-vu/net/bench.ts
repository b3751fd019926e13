// kumo-vu net bench: drive a net back-end as fast as a userspace driver can, one direction at a time.
import { ETHERTYPE_IPV4, IPPROTO_UDP, IPV4_HLEN, ETH_HLEN, UDP_HLEN, ethernet, ipv4, udp } from './frames.js';
import type { NetNic } from './nic.js';

export interface NetBenchResult {
  direction: 'tx' | 'rx';
  size: number;
  frames: number;
  seconds: number;
  pps: number;
  gbps: number;
}

/** A UDP/IPv4 frame of exactly `size` bytes (Ethernet header included, no FCS). */
export function benchFrame(size: number, srcMac: Uint8Array, dstMac: Uint8Array, src: Uint8Array, dst: Uint8Array): Uint8Array {
  const payload = Math.max(0, size - ETH_HLEN - IPV4_HLEN - UDP_HLEN);
  const f = ethernet(dstMac, srcMac, ETHERTYPE_IPV4, ipv4(src, dst, IPPROTO_UDP, udp(src, dst, 9, 9, new Uint8Array(payload)), 1));
  return f.length >= size ? f : Uint8Array.from([...f, ...new Uint8Array(size - f.length)]);
}

function result(direction: 'tx' | 'rx', size: number, frames: number, ns: bigint): NetBenchResult {
  const seconds = Number(ns) / 1e9;
  return { direction, size, frames, seconds, pps: frames / seconds, gbps: (frames * size * 8) / seconds / 1e9 };
}

/** Sends `frame` on every pair for `seconds`; counts frames the back-end consumed. */
export function benchTx(nic: NetNic, frame: Uint8Array, seconds: number): NetBenchResult {
  const pairs = nic.queuePairs;
  for (let p = 0; p < pairs; p++) nic.prepareTx(p, frame);
  let done = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  let now = t0;
  while (now < end) {
    let progress = 0;
    for (let p = 0; p < pairs; p++) {
      done += nic.reclaimTx(p);
      progress += nic.sendPrepared(p, frame.length);
    }
    if (progress === 0) nic.wait(5);
    now = process.hrtime.bigint();
  }
  for (let p = 0; p < pairs; p++) done += nic.reclaimTx(p);
  return result('tx', frame.length, done, process.hrtime.bigint() - t0);
}

/** Counts frames arriving on every pair for `seconds` (something else injects them on the host side). */
export function benchRx(nic: NetNic, size: number, seconds: number, onStart?: () => void): NetBenchResult {
  const pairs = nic.queuePairs;
  let frames = 0;
  onStart?.();
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  let now = t0;
  while (now < end) {
    let got = 0;
    for (let p = 0; p < pairs; p++) got += nic.drainRx(p);
    frames += got;
    if (got === 0) nic.wait(5);
    now = process.hrtime.bigint();
  }
  return result('rx', size, frames, now - t0);
}
