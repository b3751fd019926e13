import { FuseProtocolError } from './errors.js';

/**
 * A fixed little-endian C struct described by a field list. `u64` fields are JS numbers and
 * decoding refuses values >= 2^53; `s64` fields are numbers that saturate there (a nodeid or a lookup count that
 * large names no inode, or more lookups than any holds: what it means is clear without its exact value); `b64` fields are bigints (lock ranges, owners, raw flags); `x64` fields
 * (inode numbers, which overlayfs xino puts near 2^63; file offsets, sizes and times the host takes whole) are
 * numbers below 2^53 and exact bigints above (times are signed: negative ones decode as bigints; BigInt.asIntN);
 * `t64` fields are signed and exact the same way (file times in replies: numbers within +-2^53, bigints beyond).
 * Fields whose name starts with `_` are padding: written as 0, not part of the value type.
 */
type Prim = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | 's64' | 'b64' | 'x64' | 't64';
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type FieldType = Prim | Struct<any> | { bytes: number };
/** FUSE pads dirents, extensions and security contexts to 8 bytes. */
export const align8 = (n: number): number => (n + 7) & ~7;

export type FieldList = readonly (readonly [string, FieldType])[];

type ValueOf<T> = T extends 'b64'
  ? bigint
  : T extends 'x64' | 't64'
    ? number | bigint
  : T extends Prim
    ? number
    : T extends Struct<infer V>
      ? V
      : T extends { bytes: number }
        ? Uint8Array
        : never;

export type StructValue<L extends FieldList> = {
  [F in L[number] as F[0] extends `_${string}` ? never : F[0]]: ValueOf<F[1]>;
};

const TWO32 = 0x1_0000_0000;
const SCRATCH = new Uint8Array(new ArrayBuffer(8192));
const SCRATCH_DV = new DataView(SCRATCH.buffer);
const SAFE_HI = 0x20_0000; // hi word of 2^53

function primSize(t: Prim): number {
  return t === 'u8' ? 1 : t === 'u16' ? 2 : t === 'u32' || t === 'i32' ? 4 : 8;
}

type DecodeFn = (dv: DataView, buf: Uint8Array, o: number, nested: readonly (Struct<unknown> | null)[], fail: (field: string, detail: Record<string, unknown>) => never) => unknown;
type EncodeFn = (v: Record<string, unknown>, dv: DataView, o: number, nested: readonly (Struct<unknown> | null)[], scratch: Uint8Array) => void;

/**
 * Source of the straight-line decoder and encoder of one field list. Generated once per struct so that
 * every field access is a fixed offset and a fixed property name (no per-field switch, no megamorphic
 * keyed loads): FUSE requests and replies go through these on every call. Names come from the field
 * lists in structs.ts, never from the wire.
 */
function codecSource(fields: FieldList, offsets: number[]): { dec: string; enc: string } {
  const dec: string[] = [];
  const enc: string[] = [];
  const ret: string[] = [];
  fields.forEach(([name, t], i) => {
    const at = `o + ${offsets[i]}`;
    const key = JSON.stringify(name);
    const pad = name[0] === '_';
    const x = pad ? '0' : `(v[${key}] ?? 0)`;
    if (!pad) ret.push(`${key}: v${i}`);
    switch (t) {
      case 'u8': dec.push(`const v${i} = dv.getUint8(${at});`); enc.push(`dv.setUint8(${at}, Number(${x}));`); break;
      case 'u16': dec.push(`const v${i} = dv.getUint16(${at}, true);`); enc.push(`dv.setUint16(${at}, Number(${x}), true);`); break;
      case 'u32': dec.push(`const v${i} = dv.getUint32(${at}, true);`); enc.push(`dv.setUint32(${at}, Number(${x}) >>> 0, true);`); break;
      case 'i32': dec.push(`const v${i} = dv.getInt32(${at}, true);`); enc.push(`dv.setInt32(${at}, Number(${x}), true);`); break;
      case 'u64':
        dec.push(`const h${i} = dv.getUint32(${at} + 4, true);`,
          `if (h${i} >= ${SAFE_HI}) fail(${key}, { hi: h${i} });`,
          `const v${i} = h${i} * ${TWO32} + dv.getUint32(${at}, true);`);
        break;
      case 's64':
        dec.push(`const h${i} = dv.getUint32(${at} + 4, true);`,
          `const v${i} = h${i} >= ${SAFE_HI} ? ${Number.MAX_SAFE_INTEGER} : h${i} * ${TWO32} + dv.getUint32(${at}, true);`);
        break;
      case 'x64':
        dec.push(`const h${i} = dv.getUint32(${at} + 4, true);`,
          `const v${i} = h${i} < ${SAFE_HI} ? h${i} * ${TWO32} + dv.getUint32(${at}, true) : dv.getBigUint64(${at}, true);`);
        enc.push(`{ const x = ${x}; if (typeof x === 'bigint') dv.setBigUint64(${at}, BigInt.asUintN(64, x), true);`,
          `else { dv.setUint32(${at}, x % ${TWO32}, true); dv.setUint32(${at} + 4, Math.floor(x / ${TWO32}), true); } }`);
        break;
      case 't64':
        dec.push(`const h${i} = dv.getInt32(${at} + 4, true);`,
          `const v${i} = h${i} < ${SAFE_HI} && h${i} >= -${SAFE_HI} ? h${i} * ${TWO32} + dv.getUint32(${at}, true) : dv.getBigInt64(${at}, true);`);
        enc.push(`{ const x = ${x}; if (typeof x === 'bigint') dv.setBigInt64(${at}, BigInt.asIntN(64, x), true);`,
          `else { dv.setUint32(${at}, x % ${TWO32}, true); dv.setUint32(${at} + 4, Math.floor(x / ${TWO32}), true); } }`);
        break;
      case 'b64': dec.push(`const v${i} = dv.getBigUint64(${at}, true);`); enc.push(`dv.setBigUint64(${at}, BigInt.asUintN(64, ${pad ? '0n' : `v[${key}] ?? 0n`}), true);`); break;
      default:
        if (t instanceof Struct) {
          dec.push(`const v${i} = nested[${i}].decodeAt(dv, buf, ${at});`);
          enc.push(pad ? `scratch.fill(0, ${at}, ${at} + ${t.size});`
            : `if (v[${key}] === undefined) scratch.fill(0, ${at}, ${at} + ${t.size}); else nested[${i}].encodeAt(v[${key}], ${at});`);
        } else {
          dec.push(`const v${i} = buf.slice(${at}, ${at} + ${t.bytes});`);
          enc.push(`scratch.fill(0, ${at}, ${at} + ${t.bytes});`);
          if (!pad) enc.push(`if (v[${key}] instanceof Uint8Array) scratch.set(v[${key}].subarray(0, ${t.bytes}), ${at});`);
        }
    }
    if (t === 'u64' || t === 's64') {
      // Two 32-bit halves: no BigInt on the common path (|n| < 2^53 is exact either way).
      enc.push(`{ const n = Math.trunc(Number(${x})); const lo = n % ${TWO32};`,
        `dv.setUint32(${at}, lo < 0 ? lo + ${TWO32} : lo, true); dv.setInt32(${at} + 4, Math.floor(n / ${TWO32}), true); }`);
    }
  });
  dec.push(`return { ${ret.join(', ')} };`);
  return { dec: dec.join('\n'), enc: enc.join('\n') };
}

export class Struct<V> {
  readonly size: number;
  private readonly offsets: number[];
  private readonly nested: (Struct<unknown> | null)[];
  private readonly dec: DecodeFn;
  private readonly enc: EncodeFn;
  private readonly fail = (field: string, detail: Record<string, unknown>): never => {
    throw new FuseProtocolError(`${this.name}.${field} out of range`, detail);
  };

  constructor(
    readonly name: string,
    fields: FieldList,
  ) {
    let off = 0;
    this.offsets = [];
    for (const [, t] of fields) {
      this.offsets.push(off);
      off += typeof t === 'string' ? primSize(t) : t instanceof Struct ? t.size : t.bytes;
    }
    this.size = off;
    this.nested = fields.map(([, t]) => (t instanceof Struct ? (t as Struct<unknown>) : null));
    const src = codecSource(fields, this.offsets);
    this.dec = new Function('dv', 'buf', 'o', 'nested', 'fail', src.dec) as DecodeFn;
    this.enc = new Function('v', 'dv', 'o', 'nested', 'scratch', src.enc) as EncodeFn;
  }

  static of<L extends FieldList>(name: string, fields: L): Struct<StructValue<L>> {
    return new Struct<StructValue<L>>(name, fields);
  }

  decode(buf: Uint8Array, offset = 0): V {
    if (offset < 0 || offset + this.size > buf.length) {
      throw new FuseProtocolError(`${this.name} truncated`, { need: this.size, have: buf.length - offset });
    }
    return this.decodeAt(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), buf, offset);
  }

  /** decode() without the bounds check, for a struct nested in one already checked. */
  decodeAt(dv: DataView, buf: Uint8Array, offset: number): V {
    return this.dec(dv, buf, offset, this.nested, this.fail) as V;
  }

  /** Writes v at buf[offset..offset+size); returns offset + size. */
  encode(v: V, buf: Uint8Array, offset = 0): number {
    if (offset + this.size > buf.length) {
      throw new FuseProtocolError(`no room for ${this.name}`, { need: this.size, have: buf.length - offset });
    }
    // Encoded in an off-heap scratch buffer, then copied: a DataView over `buf` itself would force V8
    // to move a small on-heap typed array (every pack()) off the heap first.
    if (this.size > SCRATCH.length) throw new FuseProtocolError(`${this.name} too large to encode`, { size: this.size });
    this.encodeAt(v, 0);
    buf.set(SCRATCH.subarray(0, this.size), offset);
    return offset + this.size;
  }

  /** Writes v into the scratch buffer at base. */
  encodeAt(v: V, base: number): void {
    this.enc(v as Record<string, unknown>, SCRATCH_DV, base, this.nested, SCRATCH);
  }

  /** A fresh zero-filled buffer holding v. */
  pack(v: V): Uint8Array {
    const b = new Uint8Array(this.size);
    this.encode(v, b, 0);
    return b;
  }
}
