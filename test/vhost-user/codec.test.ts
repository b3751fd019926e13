import { describe, expect, it } from 'vitest';
import {
  decodeHeader, decodeReply, decodeRequest, encodeMessage, isKnownRequest, replyPayloadKind, reply, request,
  requestPayloadKind,
} from '../../protocol/vhost-user/codec.js';
import { VhostUserProtocolError } from '../../protocol/vhost-user/errors.js';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, MAX_REQUEST, MAX_SHMEM_REGIONS, Request, VRING_NOFD_MASK,
} from '../../protocol/vhost-user/messages.js';
import type { Payload, PayloadKind } from '../../protocol/vhost-user/payload.js';

const region = (i: number) => ({ guestAddr: i * 0x1000_0000, size: 0x100_0000, userAddr: 0x7f00_0000_0000 + i * 0x1000_0000, mmapOffset: i * 4096 });

function sample(kind: PayloadKind, r: Request): Payload {
  switch (kind) {
    case 'none': return { kind };
    case 'u64':
      if (r === Request.SET_VRING_KICK || r === Request.SET_VRING_CALL || r === Request.SET_VRING_ERR) return { kind, value: 3n };
      return { kind, value: 0xfedc_ba98_7654_3210n };
    case 'vringState': return { kind, index: 2, num: 256 };
    case 'vringAddr': return { kind, index: 1, flags: 1, desc: 0x7f00_1234_0000, used: 0x7f00_1234_2000, avail: 0x7f00_1234_1000, log: 0x4000 };
    case 'memTable': return { kind, regions: [region(0), region(1), region(2)] };
    case 'memRegion': return { kind, region: region(5) };
    case 'log': return { kind, size: 1 << 20, offset: 4096 };
    case 'config': return { kind, offset: 4, flags: 1, data: Uint8Array.from({ length: 60 }, (_, i) => i) };
    case 'inflight': return { kind, mmapSize: 65536, mmapOffset: 0, numQueues: 4, queueSize: 128 };
    case 'deviceState': return { kind, direction: 1, phase: 0 };
    case 'iotlb': return { kind, iova: 0x1000n, size: 0x2000n, uaddr: 0x7f00_0000_0000n, perm: 3, type: 2 };
    case 'uuid': return { kind, uuid: Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i) };
    case 'shmemConfig': return { kind, sizes: [1n << 30n, 4096n] };
    case 'bytes': return { kind, data: Uint8Array.from([1, 2, 3, 4, 5]) };
  }
}

function fdsFor(r: Request, p: Payload): number[] {
  switch (r) {
    case Request.SET_MEM_TABLE: return p.kind === 'memTable' ? p.regions.map((_, i) => 10 + i) : [];
    case Request.SET_LOG_BASE: case Request.SET_LOG_FD: case Request.SET_BACKEND_REQ_FD: case Request.SET_INFLIGHT_FD:
    case Request.GPU_SET_SOCKET: case Request.ADD_MEM_REG: case Request.SET_DEVICE_STATE_FD:
    case Request.SET_VRING_KICK: case Request.SET_VRING_CALL: case Request.SET_VRING_ERR:
      return [42];
    default: return [];
  }
}

function roundTripRequest(m: ReturnType<typeof request>) {
  const bytes = encodeMessage(m);
  const h = decodeHeader(bytes);
  expect(h.size).toBe(bytes.length - HEADER_SIZE);
  return decodeRequest(h, bytes.subarray(HEADER_SIZE), m.fds);
}

const all = Array.from({ length: MAX_REQUEST }, (_, i) => i + 1).filter(isKnownRequest);

describe('vhost-user codec', () => {
  it('knows every front-end message 1..44', () => {
    expect(all.length).toBe(44);
  });

  it.each(all.map((r) => [Request[r], r] as const))('round-trips %s request and reply', (_name, r) => {
    const p = sample(requestPayloadKind(r), r);
    const m = request(r, p, fdsFor(r, p), true);
    const back = roundTripRequest(m);
    expect(back.request).toBe(r);
    expect(back.flags & FLAG_NEED_REPLY).toBe(FLAG_NEED_REPLY);
    expect(back.payload).toEqual(p);
    expect(back.fds).toEqual(m.fds);

    const rk = replyPayloadKind(r);
    const rp = rk === null ? ({ kind: 'u64', value: 0n } as const) : sample(rk, r);
    const replyFds = r === Request.GET_INFLIGHT_FD || r === Request.POSTCOPY_ADVISE ? [7] : [];
    const rb = encodeMessage(reply(r, rp, replyFds));
    const rh = decodeHeader(rb);
    expect(rh.flags).toBe(0x5);
    const rm = decodeReply(r, rh, rb.subarray(HEADER_SIZE), replyFds, rk === null);
    if (rp.kind === 'shmemConfig') expect(rm.payload).toEqual(rp);
    else expect(rm.payload).toEqual(rp);
  });

  it('encodes the header as request/flags/size little endian', () => {
    const b = encodeMessage(request(Request.SET_FEATURES, { kind: 'u64', value: 1n << 32n }));
    expect(Array.from(b.subarray(0, 12))).toEqual([2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
    expect(b.length).toBe(20);
  });

  it('sizes the GET_CONFIG reply 12 + size, and the mem table by its region count', () => {
    const cfg = encodeMessage(reply(Request.GET_CONFIG, { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(60) }));
    expect(decodeHeader(cfg).size).toBe(72);
    const mt = encodeMessage(request(Request.SET_MEM_TABLE, { kind: 'memTable', regions: [region(0)] }, [5]));
    expect(decodeHeader(mt).size).toBe(8 + 32);
    const sh = encodeMessage(reply(Request.GET_SHMEM_CONFIG, { kind: 'shmemConfig', sizes: [] }));
    expect(decodeHeader(sh).size).toBe(8 + 8 * MAX_SHMEM_REGIONS);
  });

  const bad = (bytes: Uint8Array, fds: number[] = []) => () => decodeRequest(decodeHeader(bytes), bytes.subarray(HEADER_SIZE), fds);
  const raw = (req: number, flags: number, payload: number[]) => {
    const b = new Uint8Array(HEADER_SIZE + payload.length);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, req, true); dv.setUint32(4, flags, true); dv.setUint32(8, payload.length, true);
    b.set(payload, HEADER_SIZE);
    return b;
  };

  it('rejects malformed input with VhostUserProtocolError', () => {
    expect(() => decodeHeader(new Uint8Array(5))).toThrow(VhostUserProtocolError);
    expect(bad(raw(99, 1, []))).toThrow(/unknown request/);
    expect(bad(raw(Request.SET_FEATURES, 2, new Array(8).fill(0)))).toThrow(/version/);
    expect(bad(raw(Request.SET_FEATURES, 1 | FLAG_REPLY, new Array(8).fill(0)))).toThrow(/REPLY/);
    expect(bad(raw(Request.SET_FEATURES, 1, [1, 2, 3]))).toThrow(/8 bytes/);
    const big = new Uint8Array(12);
    new DataView(big.buffer).setUint32(0, 1, true);
    new DataView(big.buffer).setUint32(4, 1, true);
    new DataView(big.buffer).setUint32(8, 4097, true);
    expect(() => decodeHeader(big)).toThrow(/too large/);
    // mem table: 9 regions, and a region count larger than the payload
    expect(bad(raw(Request.SET_MEM_TABLE, 1, [9, 0, 0, 0, 0, 0, 0, 0]))).toThrow(/too many/);
    expect(bad(raw(Request.SET_MEM_TABLE, 1, [2, 0, 0, 0, 0, 0, 0, 0, ...new Array(32).fill(0)]), [1, 2])).toThrow(/shorter/);
    // config size not matching the payload, and over 256 bytes
    expect(bad(raw(Request.SET_CONFIG, 1, [0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2]))).toThrow(/does not match/);
    expect(bad(raw(Request.SET_CONFIG, 1, [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]))).toThrow(/too large/);
  });

  it('validates fd counts', () => {
    const kick = (v: number) => encodeMessage(request(Request.SET_VRING_KICK, { kind: 'u64', value: BigInt(v) }));
    expect(bad(kick(0))).toThrow(/carries 0 fds, expected 1/);
    expect(bad(kick(0), [3, 4])).toThrow(/carries 2 fds/);
    expect(bad(kick(VRING_NOFD_MASK), [3])).toThrow(/expected 0/);
    expect(roundTripRequest(request(Request.SET_VRING_KICK, { kind: 'u64', value: BigInt(VRING_NOFD_MASK | 1) })).fds).toEqual([]);
    const mt = encodeMessage(request(Request.SET_MEM_TABLE, { kind: 'memTable', regions: [region(0), region(1)] }));
    expect(bad(mt, [3])).toThrow(/carries 1 fds, expected 2/);
    expect(bad(encodeMessage(request(Request.GET_FEATURES, { kind: 'none' })), [3])).toThrow(/expected 0/);
    expect(bad(encodeMessage(request(Request.ADD_MEM_REG, { kind: 'memRegion', region: region(0) })))).toThrow(/expected 1/);
  });

  it('checks replies echo the request and carry the REPLY flag', () => {
    const r = encodeMessage(reply(Request.GET_VRING_BASE, { kind: 'vringState', index: 1, num: 7 }));
    expect(() => decodeReply(Request.GET_FEATURES, decodeHeader(r), r.subarray(HEADER_SIZE), [])).toThrow(/wrong request/);
    const q = encodeMessage(request(Request.GET_FEATURES, { kind: 'u64', value: 0n }));
    expect(() => decodeReply(Request.GET_FEATURES, decodeHeader(q), q.subarray(HEADER_SIZE), [])).toThrow(/REPLY flag/);
  });

  it('refuses u64 addresses beyond 2^53 and oversized tables on encode', () => {
    const b = encodeMessage(request(Request.SET_VRING_ADDR, { kind: 'vringAddr', index: 0, flags: 0, desc: 0, used: 0, avail: 0, log: 0 }));
    b[HEADER_SIZE + 15] = 0xff;
    expect(bad(b)).toThrow(/53 bits/);
    expect(() => encodeMessage(request(Request.SET_MEM_TABLE, { kind: 'memTable', regions: Array.from({ length: 9 }, (_, i) => region(i)) }))).toThrow(/too many/);
  });
});
