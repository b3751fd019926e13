/**
 * A small AML (ACPI Machine Language) encoder: each function returns the bytes of one term.
 * Grammar and opcodes: ACPI 6.x §20 (AML specification).
 */
export type Aml = Uint8Array;

export class AmlError extends RangeError {}

export function cat(...parts: (Aml | number[])[]): Aml {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** PkgLength for a package whose contents (after the PkgLength) are `len` bytes; the encoding counts itself. */
export function pkgLength(len: number): Aml {
  for (let n = 1; n <= 4; n++) {
    const total = len + n;
    const limit = n === 1 ? 0x40 : 1 << (4 + 8 * (n - 1));
    if (total < limit) return encodeLength(total, n);
  }
  throw new AmlError(`AML package too long: ${len}`);
}

/** Raw PkgLength encoding of `value` (field widths in a FieldList count bits, not themselves). */
export function fieldLength(bits: number): Aml {
  for (let n = 1; n <= 4; n++) {
    const limit = n === 1 ? 0x40 : 1 << (4 + 8 * (n - 1));
    if (bits < limit) return encodeLength(bits, n);
  }
  throw new AmlError(`field too long: ${bits}`);
}

function encodeLength(v: number, n: number): Aml {
  if (n === 1) return Uint8Array.of(v);
  const out = new Uint8Array(n);
  out[0] = ((n - 1) << 6) | (v & 0x0f);
  for (let i = 1; i < n; i++) out[i] = (v >>> (4 + 8 * (i - 1))) & 0xff;
  return out;
}

function withPkg(op: number[], body: Aml): Aml {
  return cat(op, pkgLength(body.length), body);
}

export function nameSeg(s: string): Aml {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new AmlError(`bad AML name segment: ${s}`);
  return new TextEncoder().encode(s.padEnd(4, '_'));
}

/** "\\_SB_.PCI0", "_HID", "^PWRB" → NameString. */
export function nameString(path: string): Aml {
  let prefix: number[] = [];
  let rest = path;
  if (rest.startsWith('\\')) {
    prefix = [0x5c];
    rest = rest.slice(1);
  }
  while (rest.startsWith('^')) {
    prefix.push(0x5e);
    rest = rest.slice(1);
  }
  if (rest === '') return cat(prefix, [0x00]);
  const segs = rest.split('.').map(nameSeg);
  if (segs.length === 1) return cat(prefix, segs[0]);
  if (segs.length === 2) return cat(prefix, [0x2e], segs[0], segs[1]);
  return cat(prefix, [0x2f, segs.length], ...segs);
}

export function integer(v: number | bigint): Aml {
  const n = BigInt(v);
  if (n < 0n || n > 0xffff_ffff_ffff_ffffn) throw new AmlError(`AML integer out of range: ${v}`);
  if (n === 0n) return Uint8Array.of(0x00);
  if (n === 1n) return Uint8Array.of(0x01);
  const le = (bytes: number) => Array.from({ length: bytes }, (_, i) => Number((n >> BigInt(8 * i)) & 0xffn));
  if (n <= 0xffn) return cat([0x0a], le(1));
  if (n <= 0xffffn) return cat([0x0b], le(2));
  if (n <= 0xffff_ffffn) return cat([0x0c], le(4));
  return cat([0x0e], le(8));
}

export const ZERO = Uint8Array.of(0x00);
export const ONE = Uint8Array.of(0x01);

export function string(s: string): Aml {
  if (!/^[\x01-\x7f]*$/.test(s)) throw new AmlError('AML strings are ASCII without NUL');
  return cat([0x0d], new TextEncoder().encode(s), [0x00]);
}

export function buffer(bytes: Aml): Aml {
  return withPkg([0x11], cat(integer(bytes.length), bytes));
}

export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new AmlError(`bad EISA id: ${id}`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const b0 = (c(0) << 2) | (c(1) >> 3);
  const b1 = ((c(1) & 7) << 5) | c(2);
  const hex = parseInt(id.slice(3), 16);
  return integer((b0 | (b1 << 8) | ((hex >> 8) << 16) | ((hex & 0xff) << 24)) >>> 0);
}

export function name(path: string, value: Aml): Aml {
  return cat([0x08], nameString(path), value);
}

export function scope(path: string, ...children: Aml[]): Aml {
  return withPkg([0x10], cat(nameString(path), ...children));
}

export function device(path: string, ...children: Aml[]): Aml {
  return withPkg([0x5b, 0x82], cat(nameString(path), ...children));
}

export function method(path: string, argc: number, serialized: boolean, ...body: Aml[]): Aml {
  if (argc < 0 || argc > 7) throw new AmlError(`bad method arg count: ${argc}`);
  return withPkg([0x14], cat(nameString(path), [argc | (serialized ? 0x08 : 0)], ...body));
}

export function pkg(...elements: Aml[]): Aml {
  if (elements.length > 255) throw new AmlError('package too large');
  return withPkg([0x12], cat([elements.length], ...elements));
}

export function ret(value: Aml): Aml {
  return cat([0xa4], value);
}

export function if_(predicate: Aml, ...body: Aml[]): Aml {
  return withPkg([0xa0], cat(predicate, ...body));
}

export function and(a: Aml, b: Aml, target: Aml = ZERO): Aml {
  return cat([0x7b], a, b, target);
}

export function lEqual(a: Aml, b: Aml): Aml {
  return cat([0x93], a, b);
}

export function notify(object: string, value: Aml): Aml {
  return cat([0x86], nameString(object), value);
}

export function store(src: Aml, dst: Aml): Aml {
  return cat([0x70], src, dst);
}

export function local(n: number): Aml {
  return Uint8Array.of(0x60 + n);
}

export function arg(n: number): Aml {
  return Uint8Array.of(0x68 + n);
}

/** Reference to a named object as a term (e.g. a field name as Store's source). */
export function ref(path: string): Aml {
  return nameString(path);
}

export const SPACE_SYSTEM_MEMORY = 0;
export const SPACE_SYSTEM_IO = 1;

export function opRegion(path: string, space: number, offset: number | bigint, length: number): Aml {
  return cat([0x5b, 0x80], nameString(path), [space], integer(offset), integer(length));
}

export const FIELD_BYTE_ACC = 1;
export const FIELD_NO_LOCK = 0;
export const FIELD_WRITE_AS_ZEROS = 1 << 6;

export function field(region: string, flags: number, fields: [string, number][]): Aml {
  const list = fields.map(([n, bits]) => cat(nameSeg(n), fieldLength(bits)));
  return withPkg([0x5b, 0x81], cat(nameString(region), [flags], ...list));
}

// ---- resource descriptors (ACPI 6.x §6.4) ----

const u16 = (v: number) => [v & 0xff, (v >> 8) & 0xff];
const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
const u64 = (v: number) => [...u32(v % 2 ** 32), ...u32(Math.floor(v / 2 ** 32))];

/** Producer, MinFixed, MaxFixed, PosDecode. */
const ADDR_FLAGS_PRODUCER = 0x0c;

export function wordBusNumber(min: number, max: number): Aml {
  return Uint8Array.from([0x88, ...u16(13), 2, ADDR_FLAGS_PRODUCER, 0, ...u16(0), ...u16(min), ...u16(max), ...u16(0), ...u16(max - min + 1)]);
}

export function wordIo(min: number, max: number): Aml {
  return Uint8Array.from([0x88, ...u16(13), 1, ADDR_FLAGS_PRODUCER, 3 /* EntireRange */, ...u16(0), ...u16(min), ...u16(max), ...u16(0), ...u16(max - min + 1)]);
}

/** cacheable: false → NonCacheable; both ReadWrite. */
export function dwordMemory(min: number, max: number, cacheable = false): Aml {
  return Uint8Array.from([0x87, ...u16(23), 0, ADDR_FLAGS_PRODUCER, cacheable ? 0x03 : 0x01, ...u32(0), ...u32(min), ...u32(max), ...u32(0), ...u32(max - min + 1)]);
}

export function qwordMemory(min: number, max: number, cacheable = false): Aml {
  return Uint8Array.from([0x8a, ...u16(43), 0, ADDR_FLAGS_PRODUCER, cacheable ? 0x03 : 0x01, ...u64(0), ...u64(min), ...u64(max), ...u64(0), ...u64(max - min + 1)]);
}

export function io(min: number, max: number, align: number, length: number): Aml {
  return Uint8Array.from([0x47, 1 /* Decode16 */, ...u16(min), ...u16(max), align, length]);
}

/** Extended Interrupt: ResourceConsumer, Edge, ActiveHigh, Exclusive. */
export function interrupt(...gsis: number[]): Aml {
  return Uint8Array.from([0x89, ...u16(2 + 4 * gsis.length), 0x03, gsis.length, ...gsis.flatMap(u32)]);
}

export function memory32Fixed(base: number, length: number, readWrite = true): Aml {
  return Uint8Array.from([0x86, ...u16(9), readWrite ? 1 : 0, ...u32(base), ...u32(length)]);
}

export function resourceTemplate(...descriptors: Aml[]): Aml {
  return buffer(cat(...descriptors, [0x79, 0x00]));
}
