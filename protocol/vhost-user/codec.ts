import { VhostUserProtocolError } from './errors.js';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, FLAG_VERSION_MASK, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD,
  Request, VRING_NOFD_MASK, requestName,
} from './messages.js';
import { decodePayload, encodePayload, payloadSize, type Payload, type PayloadKind } from './payload.js';

export interface Header {
  request: number;
  flags: number;
  size: number;
}

/** A decoded message (either direction). `fds` are owned by whoever holds the message. */
export interface Message<P extends Payload = Payload> {
  request: Request;
  flags: number;
  payload: P;
  fds: number[];
}

type FdRange = readonly [min: number, max: number];

interface RequestSpec {
  payload: PayloadKind;
  /** Body of the message's own reply; null when it only gets a REPLY_ACK u64 (if NEED_REPLY was set). */
  reply: PayloadKind | null;
  fds: (p: Payload) => FdRange;
  replyFds: FdRange;
}

const NO_FDS: FdRange = [0, 0];
const ONE_FD: FdRange = [1, 1];
const OPT_FD: FdRange = [0, 1];
const none = (): FdRange => NO_FDS;
const one = (): FdRange => ONE_FD;
const optional = (): FdRange => OPT_FD;
const vringFile = (p: Payload): FdRange =>
  p.kind === 'u64' && (p.value & BigInt(VRING_NOFD_MASK)) !== 0n ? NO_FDS : ONE_FD;
const memTableFds = (p: Payload): FdRange => {
  const n = p.kind === 'memTable' ? p.regions.length : 0;
  return [n, n];
};

function spec(payload: PayloadKind, reply: PayloadKind | null, fds: (p: Payload) => FdRange = none, replyFds: FdRange = NO_FDS): RequestSpec {
  return { payload, reply, fds, replyFds };
}

/** What each front-end request carries and what its reply carries (vhost-user spec "Front-end message types"). */
const SPECS: Record<Request, RequestSpec> = {
  [Request.GET_FEATURES]: spec('none', 'u64'),
  [Request.SET_FEATURES]: spec('u64', null),
  [Request.SET_OWNER]: spec('none', null),
  [Request.RESET_OWNER]: spec('none', null),
  [Request.SET_MEM_TABLE]: spec('memTable', null, memTableFds),
  // With LOG_SHMFD the back-end answers SET_LOG_BASE with a u64 (the daemon handles that case).
  [Request.SET_LOG_BASE]: spec('log', null, optional),
  [Request.SET_LOG_FD]: spec('none', null, one),
  [Request.SET_VRING_NUM]: spec('vringState', null),
  [Request.SET_VRING_ADDR]: spec('vringAddr', null),
  [Request.SET_VRING_BASE]: spec('vringState', null),
  [Request.GET_VRING_BASE]: spec('vringState', 'vringState'),
  [Request.SET_VRING_KICK]: spec('u64', null, vringFile),
  [Request.SET_VRING_CALL]: spec('u64', null, vringFile),
  [Request.SET_VRING_ERR]: spec('u64', null, vringFile),
  [Request.GET_PROTOCOL_FEATURES]: spec('none', 'u64'),
  [Request.SET_PROTOCOL_FEATURES]: spec('u64', null),
  [Request.GET_QUEUE_NUM]: spec('none', 'u64'),
  [Request.SET_VRING_ENABLE]: spec('vringState', null),
  [Request.SEND_RARP]: spec('u64', null),
  [Request.NET_SET_MTU]: spec('u64', null),
  [Request.SET_BACKEND_REQ_FD]: spec('none', null, one),
  [Request.IOTLB_MSG]: spec('iotlb', null),
  [Request.SET_VRING_ENDIAN]: spec('vringState', null),
  [Request.GET_CONFIG]: spec('config', 'config'),
  [Request.SET_CONFIG]: spec('config', null),
  [Request.CREATE_CRYPTO_SESSION]: spec('bytes', 'bytes'),
  [Request.CLOSE_CRYPTO_SESSION]: spec('u64', null),
  [Request.POSTCOPY_ADVISE]: spec('none', 'none', none, ONE_FD),
  [Request.POSTCOPY_LISTEN]: spec('none', null),
  [Request.POSTCOPY_END]: spec('none', 'u64'),
  [Request.GET_INFLIGHT_FD]: spec('inflight', 'inflight', none, ONE_FD),
  [Request.SET_INFLIGHT_FD]: spec('inflight', null, one),
  [Request.GPU_SET_SOCKET]: spec('none', null, one),
  [Request.RESET_DEVICE]: spec('none', null),
  [Request.VRING_KICK]: spec('vringState', null),
  [Request.GET_MAX_MEM_SLOTS]: spec('none', 'u64'),
  [Request.ADD_MEM_REG]: spec('memRegion', null, one),
  // The spec says REM_MEM_REG carries no fd, but a front-end may send one: accept it (the receiver closes it).
  [Request.REM_MEM_REG]: spec('memRegion', null, optional),
  [Request.SET_STATUS]: spec('u64', null),
  [Request.GET_STATUS]: spec('none', 'u64'),
  [Request.GET_SHARED_OBJECT]: spec('uuid', 'u64', none, OPT_FD),
  [Request.SET_DEVICE_STATE_FD]: spec('deviceState', 'u64', one, OPT_FD),
  [Request.CHECK_DEVICE_STATE]: spec('none', 'u64'),
  [Request.GET_SHMEM_CONFIG]: spec('none', 'shmemConfig'),
};

export function isKnownRequest(r: number): r is Request {
  return Object.prototype.hasOwnProperty.call(SPECS, r);
}

/** Payload kind a request carries. */
export function requestPayloadKind(r: Request): PayloadKind {
  return SPECS[r].payload;
}

/** Payload kind of the request's own reply, or null when it only gets a REPLY_ACK. */
export function replyPayloadKind(r: Request): PayloadKind | null {
  return SPECS[r].reply;
}

export function hasOwnReply(r: Request): boolean {
  return SPECS[r].reply !== null;
}

function fail(msg: string, ctx: Record<string, unknown>): never {
  throw new VhostUserProtocolError(msg, ctx);
}

export function encodeHeader(dst: Uint8Array, h: Header): void {
  const dv = new DataView(dst.buffer, dst.byteOffset, HEADER_SIZE);
  dv.setUint32(0, h.request, true);
  dv.setUint32(4, h.flags, true);
  dv.setUint32(8, h.size, true);
}

/** Parses and checks a 12-byte header: version 1, payload within MAX_PAYLOAD. */
export function decodeHeader(src: Uint8Array): Header {
  if (src.length < HEADER_SIZE) fail('short header', { size: src.length });
  const dv = new DataView(src.buffer, src.byteOffset, HEADER_SIZE);
  const h = { request: dv.getUint32(0, true), flags: dv.getUint32(4, true), size: dv.getUint32(8, true) };
  if ((h.flags & FLAG_VERSION_MASK) !== FLAG_VERSION) fail('unsupported protocol version', { flags: h.flags, request: h.request });
  if (h.size > MAX_PAYLOAD) fail('payload too large', { size: h.size, request: requestName(h.request) });
  return h;
}

/** Header + payload bytes for a message; `flags` is taken as given except that the version bits are forced to 1. */
export function encodeMessage(msg: Message): Uint8Array {
  const size = payloadSize(msg.payload);
  if (size > MAX_PAYLOAD) fail('payload too large', { size, request: requestName(msg.request) });
  if (msg.fds.length > MAX_FDS) fail('too many fds', { count: msg.fds.length });
  const out = new Uint8Array(HEADER_SIZE + size);
  encodeHeader(out, { request: msg.request, flags: (msg.flags & ~FLAG_VERSION_MASK) | FLAG_VERSION, size });
  encodePayload(msg.payload, out.subarray(HEADER_SIZE));
  return out;
}

function checkFds(request: Request, fds: number[], [min, max]: FdRange, dir: string): void {
  if (fds.length < min || fds.length > max) {
    fail(`${dir} ${requestName(request)} carries ${fds.length} fds, expected ${min === max ? min : `${min}-${max}`}`, {
      request: requestName(request),
      fds: fds.length,
    });
  }
}

/** Front-end → back-end: validates request number, flags, payload shape and fd count. */
export function decodeRequest(h: Header, payload: Uint8Array, fds: number[]): Message {
  if (!isKnownRequest(h.request)) fail('unknown request', { request: h.request });
  if (h.flags & FLAG_REPLY) fail('request has the REPLY flag', { request: requestName(h.request), flags: h.flags });
  if (payload.length !== h.size) fail('payload length does not match the header', { size: h.size, got: payload.length });
  const s = SPECS[h.request];
  const p = decodePayload(s.payload, payload);
  checkFds(h.request, fds, s.fds(p), 'request');
  return { request: h.request, flags: h.flags, payload: p, fds };
}

/**
 * Back-end → front-end reply to `expected`: must have the REPLY flag and echo the request number.
 * `ack` = true decodes a REPLY_ACK u64 instead of the request's own reply body.
 */
export function decodeReply(expected: Request, h: Header, payload: Uint8Array, fds: number[], ack = false): Message {
  if (h.request !== expected) fail('reply to the wrong request', { expected: requestName(expected), got: h.request });
  if (!(h.flags & FLAG_REPLY)) fail('reply lacks the REPLY flag', { request: requestName(expected), flags: h.flags });
  if (payload.length !== h.size) fail('payload length does not match the header', { size: h.size, got: payload.length });
  const s = SPECS[expected];
  const kind = ack ? 'u64' : (s.reply ?? 'u64');
  const p = decodePayload(kind, payload);
  checkFds(expected, fds, ack ? NO_FDS : s.replyFds, 'reply to');
  return { request: expected, flags: h.flags, payload: p, fds };
}

/** Builds a request message (version flag set; NEED_REPLY when asked). */
export function request<P extends Payload>(r: Request, payload: P, fds: number[] = [], needReply = false): Message<P> {
  return { request: r, flags: FLAG_VERSION | (needReply ? FLAG_NEED_REPLY : 0), payload, fds };
}

/** Builds a reply message to r. */
export function reply<P extends Payload>(r: Request, payload: P, fds: number[] = []): Message<P> {
  return { request: r, flags: FLAG_VERSION | FLAG_REPLY, payload, fds };
}

export function needsReply(m: { flags: number }): boolean {
  return (m.flags & FLAG_NEED_REPLY) !== 0;
}
