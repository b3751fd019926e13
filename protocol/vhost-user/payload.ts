import { VhostUserProtocolError } from './errors.js';
import { CONFIG_HEADER_SIZE, MAX_CONFIG_SIZE, MAX_MEM_REGIONS, MAX_PAYLOAD, MAX_SHMEM_REGIONS } from './messages.js';

/** One guest memory region as the front-end describes it (SET_MEM_TABLE, ADD/REM_MEM_REG). */
export interface MemRegion {
  guestAddr: number;
  size: number;
  /** Front-end virtual address: the translation key for SET_VRING_ADDR. */
  userAddr: number;
  /** Offset into the region's fd. */
  mmapOffset: number;
}

export interface VringAddr {
  index: number;
  flags: number;
  /** Front-end user addresses (not guest addresses). */
  desc: number;
  used: number;
  avail: number;
  /** Guest address of the used ring for dirty logging (when flags has VRING_F_LOG). */
  log: number;
}

/** Every payload shape of the spec; `kind` says which. u64 values that are addresses or sizes are numbers (< 2^53). */
export type Payload =
  | { kind: 'none' }
  | { kind: 'u64'; value: bigint }
  | { kind: 'vringState'; index: number; num: number }
  | ({ kind: 'vringAddr' } & VringAddr)
  | { kind: 'memTable'; regions: MemRegion[] }
  | { kind: 'memRegion'; region: MemRegion }
  | { kind: 'log'; size: number; offset: number }
  | { kind: 'config'; offset: number; flags: number; data: Uint8Array }
  | { kind: 'inflight'; mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }
  | { kind: 'deviceState'; direction: number; phase: number }
  | { kind: 'iotlb'; iova: bigint; size: bigint; uaddr: bigint; perm: number; type: number }
  | { kind: 'uuid'; uuid: Uint8Array }
  | { kind: 'shmemConfig'; sizes: bigint[] }
  | { kind: 'bytes'; data: Uint8Array };

export type PayloadKind = Payload['kind'];
export type PayloadOf<K extends PayloadKind> = Extract<Payload, { kind: K }>;

const TWO32 = 0x1_0000_0000;
const REGION_SIZE = 32;
const INFLIGHT_SIZE = 24; // C struct {u64,u64,u16,u16} padded to 8
const INFLIGHT_MIN = 20;
const IOTLB_SIZE = 32; // C struct vhost_iotlb_msg {u64,u64,u64,u8,u8} padded to 8

function fail(msg: string, ctx: Record<string, unknown> = {}): never {
  throw new VhostUserProtocolError(msg, ctx);
}

function getU64(dv: DataView, off: number, what: string): number {
  const lo = dv.getUint32(off, true);
  const hi = dv.getUint32(off + 4, true);
  if (hi >= 0x20_0000) fail(`${what} does not fit in 53 bits`, { hi, lo });
  return hi * TWO32 + lo;
}

function putU64(dv: DataView, off: number, v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) fail(`${what} must be a non-negative safe integer`, { value: v });
  dv.setUint32(off, v % TWO32, true);
  dv.setUint32(off + 4, Math.floor(v / TWO32), true);
}

function checkU32(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) fail(`${what} must be a u32`, { value: v });
}

function readRegion(dv: DataView, off: number): MemRegion {
  return {
    guestAddr: getU64(dv, off, 'region guest address'),
    size: getU64(dv, off + 8, 'region size'),
    userAddr: getU64(dv, off + 16, 'region user address'),
    mmapOffset: getU64(dv, off + 24, 'region mmap offset'),
  };
}

function writeRegion(dv: DataView, off: number, r: MemRegion): void {
  putU64(dv, off, r.guestAddr, 'region guest address');
  putU64(dv, off + 8, r.size, 'region size');
  putU64(dv, off + 16, r.userAddr, 'region user address');
  putU64(dv, off + 24, r.mmapOffset, 'region mmap offset');
}

function exact(kind: string, len: number, want: number): void {
  if (len !== want) fail(`${kind} payload must be ${want} bytes`, { kind, size: len });
}

/** Byte length of a payload once encoded. */
export function payloadSize(p: Payload): number {
  switch (p.kind) {
    case 'none': return 0;
    case 'u64': return 8;
    case 'vringState': return 8;
    case 'vringAddr': return 40;
    case 'memTable': return 8 + REGION_SIZE * p.regions.length;
    case 'memRegion': return 8 + REGION_SIZE;
    case 'log': return 16;
    case 'config': return CONFIG_HEADER_SIZE + p.data.length;
    case 'inflight': return INFLIGHT_SIZE;
    case 'deviceState': return 8;
    case 'iotlb': return IOTLB_SIZE;
    case 'uuid': return 16;
    case 'shmemConfig': return 8 + 8 * MAX_SHMEM_REGIONS;
    case 'bytes': return p.data.length;
  }
}

/** Writes p into dst (exactly payloadSize(p) bytes). Throws VhostUserProtocolError on values that do not fit. */
export function encodePayload(p: Payload, dst: Uint8Array): void {
  const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  switch (p.kind) {
    case 'none':
      return;
    case 'u64':
      dv.setBigUint64(0, BigInt.asUintN(64, p.value), true);
      return;
    case 'vringState':
      checkU32(p.index, 'vring index');
      checkU32(p.num, 'vring num');
      dv.setUint32(0, p.index, true);
      dv.setUint32(4, p.num, true);
      return;
    case 'vringAddr':
      checkU32(p.index, 'vring index');
      checkU32(p.flags, 'vring flags');
      dv.setUint32(0, p.index, true);
      dv.setUint32(4, p.flags, true);
      putU64(dv, 8, p.desc, 'desc address');
      putU64(dv, 16, p.used, 'used address');
      putU64(dv, 24, p.avail, 'avail address');
      putU64(dv, 32, p.log, 'log address');
      return;
    case 'memTable':
      if (p.regions.length > MAX_MEM_REGIONS) fail('too many memory regions', { count: p.regions.length });
      dv.setUint32(0, p.regions.length, true);
      dv.setUint32(4, 0, true);
      p.regions.forEach((r, i) => writeRegion(dv, 8 + i * REGION_SIZE, r));
      return;
    case 'memRegion':
      dv.setBigUint64(0, 0n, true);
      writeRegion(dv, 8, p.region);
      return;
    case 'log':
      putU64(dv, 0, p.size, 'log size');
      putU64(dv, 8, p.offset, 'log offset');
      return;
    case 'config':
      if (p.data.length > MAX_CONFIG_SIZE) fail('config payload too large', { size: p.data.length });
      checkU32(p.offset, 'config offset');
      checkU32(p.flags, 'config flags');
      dv.setUint32(0, p.offset, true);
      dv.setUint32(4, p.data.length, true);
      dv.setUint32(8, p.flags, true);
      dst.set(p.data, CONFIG_HEADER_SIZE);
      return;
    case 'inflight':
      putU64(dv, 0, p.mmapSize, 'inflight size');
      putU64(dv, 8, p.mmapOffset, 'inflight offset');
      dv.setUint16(16, p.numQueues, true);
      dv.setUint16(18, p.queueSize, true);
      dv.setUint32(20, 0, true);
      return;
    case 'deviceState':
      checkU32(p.direction, 'direction');
      checkU32(p.phase, 'phase');
      dv.setUint32(0, p.direction, true);
      dv.setUint32(4, p.phase, true);
      return;
    case 'iotlb':
      dv.setBigUint64(0, BigInt.asUintN(64, p.iova), true);
      dv.setBigUint64(8, BigInt.asUintN(64, p.size), true);
      dv.setBigUint64(16, BigInt.asUintN(64, p.uaddr), true);
      dv.setUint8(24, p.perm);
      dv.setUint8(25, p.type);
      return;
    case 'uuid':
      if (p.uuid.length !== 16) fail('uuid must be 16 bytes', { size: p.uuid.length });
      dst.set(p.uuid);
      return;
    case 'shmemConfig':
      if (p.sizes.length > MAX_SHMEM_REGIONS) fail('too many shared memory regions', { count: p.sizes.length });
      dv.setUint32(0, p.sizes.length, true);
      p.sizes.forEach((s, i) => dv.setBigUint64(8 + 8 * i, BigInt.asUintN(64, s), true));
      return;
    case 'bytes':
      dst.set(p.data);
      return;
  }
}

/** Parses a payload of the expected kind; throws VhostUserProtocolError on a size or value that is wrong. */
export function decodePayload(kind: PayloadKind, src: Uint8Array): Payload {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const len = src.length;
  if (len > MAX_PAYLOAD) fail('payload too large', { size: len });
  switch (kind) {
    case 'none':
      // Some front-ends send a zero u64 where the spec has no payload; it carries nothing.
      return { kind };
    case 'u64':
      exact(kind, len, 8);
      return { kind, value: dv.getBigUint64(0, true) };
    case 'vringState':
      exact(kind, len, 8);
      return { kind, index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
    case 'vringAddr':
      exact(kind, len, 40);
      return {
        kind,
        index: dv.getUint32(0, true),
        flags: dv.getUint32(4, true),
        desc: getU64(dv, 8, 'desc address'),
        used: getU64(dv, 16, 'used address'),
        avail: getU64(dv, 24, 'avail address'),
        log: getU64(dv, 32, 'log address'),
      };
    case 'memTable': {
      if (len < 8) fail('memory table payload too short', { size: len });
      const n = dv.getUint32(0, true);
      if (n > MAX_MEM_REGIONS) fail('too many memory regions', { count: n });
      if (len < 8 + n * REGION_SIZE) fail('memory table payload shorter than its region count', { size: len, count: n });
      const regions: MemRegion[] = [];
      for (let i = 0; i < n; i++) regions.push(readRegion(dv, 8 + i * REGION_SIZE));
      return { kind, regions };
    }
    case 'memRegion':
      exact(kind, len, 8 + REGION_SIZE);
      return { kind, region: readRegion(dv, 8) };
    case 'log':
      exact(kind, len, 16);
      return { kind, size: getU64(dv, 0, 'log size'), offset: getU64(dv, 8, 'log offset') };
    case 'config': {
      if (len < CONFIG_HEADER_SIZE) fail('config payload too short', { size: len });
      const size = dv.getUint32(4, true);
      if (size > MAX_CONFIG_SIZE) fail('config size too large', { size });
      if (len !== CONFIG_HEADER_SIZE + size) fail('config size does not match the payload', { size, payload: len });
      return {
        kind,
        offset: dv.getUint32(0, true),
        flags: dv.getUint32(8, true),
        data: src.slice(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + size),
      };
    }
    case 'inflight':
      if (len < INFLIGHT_MIN || len > INFLIGHT_SIZE) fail('inflight payload has the wrong size', { size: len });
      return {
        kind,
        mmapSize: getU64(dv, 0, 'inflight size'),
        mmapOffset: getU64(dv, 8, 'inflight offset'),
        numQueues: dv.getUint16(16, true),
        queueSize: dv.getUint16(18, true),
      };
    case 'deviceState':
      exact(kind, len, 8);
      return { kind, direction: dv.getUint32(0, true), phase: dv.getUint32(4, true) };
    case 'iotlb':
      if (len < 26 || len > IOTLB_SIZE) fail('iotlb payload has the wrong size', { size: len });
      return {
        kind,
        iova: dv.getBigUint64(0, true),
        size: dv.getBigUint64(8, true),
        uaddr: dv.getBigUint64(16, true),
        perm: dv.getUint8(24),
        type: dv.getUint8(25),
      };
    case 'uuid':
      exact(kind, len, 16);
      return { kind, uuid: src.slice(0, 16) };
    case 'shmemConfig': {
      if (len < 8) fail('shmem config payload too short', { size: len });
      const n = dv.getUint32(0, true);
      if (n > MAX_SHMEM_REGIONS || len < 8 + 8 * n) fail('shmem config region count does not fit the payload', { count: n, size: len });
      const sizes: bigint[] = [];
      for (let i = 0; i < n; i++) sizes.push(dv.getBigUint64(8 + 8 * i, true));
      return { kind, sizes };
    }
    case 'bytes':
      return { kind, data: src.slice() };
  }
}
