import { FuseProtocolError } from './errors.js';

/**
 * A fixed little-endian C struct described by a field list. `u64` fields are JS numbers and
 * decoding refuses values >= 2^53; `b64` fields are bigints (lock ranges, owners, raw flags).
 * Fields whose name starts with `_` are padding: written as 0, not part of the value type.
 */
type Prim = 'u8' | 'u16' | 'u32' | 'i32' | 'u64' | 'i64' | 'b64';
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type FieldType = Prim | Struct<any> | { bytes: number };
export type FieldList = readonly (readonly [string, FieldType])[];

type ValueOf<T> = T extends 'b64'
  ? bigint
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

export class Struct<V> {
  readonly size: number;
  private readonly offsets: number[];
  constructor(
    readonly name: string,
    private readonly fields: FieldList,
  ) {
    let off = 0;
    this.offsets = [];
    for (const [, t] of fields) {
      this.offsets.push(off);
      off += typeof t === 'string' ? primSize(t) : t instanceof Struct ? t.size : t.bytes;
    }
    this.size = off;
  }

  static of<L extends FieldList>(name: string, fields: L): Struct<StructValue<L>> {
    return new Struct<StructValue<L>>(name, fields);
  }

  decode(buf: Uint8Array, offset = 0): V {
    if (offset < 0 || offset + this.size > buf.length) {
      throw new FuseProtocolError(`${this.name} truncated`, { need: this.size, have: buf.length - offset });
    }
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const out: Record<string, unknown> = {};
    for (let i = 0; i < this.fields.length; i++) {
      const [name, t] = this.fields[i];
      const o = offset + this.offsets[i];
      let v: unknown;
      switch (t) {
        case 'u8': v = dv.getUint8(o); break;
        case 'u16': v = dv.getUint16(o, true); break;
        case 'u32': v = dv.getUint32(o, true); break;
        case 'i32': v = dv.getInt32(o, true); break;
        case 'u64': {
          const hi = dv.getUint32(o + 4, true);
          if (hi >= SAFE_HI) throw new FuseProtocolError(`${this.name}.${name} out of range`, { hi });
          v = hi * TWO32 + dv.getUint32(o, true);
          break;
        }
        case 'i64': {
          const big = dv.getBigInt64(o, true);
          if (big > BigInt(Number.MAX_SAFE_INTEGER) || big < BigInt(Number.MIN_SAFE_INTEGER)) {
            throw new FuseProtocolError(`${this.name}.${name} out of range`, {});
          }
          v = Number(big);
          break;
        }
        case 'b64': v = dv.getBigUint64(o, true); break;
        default:
          if (t instanceof Struct) v = t.decode(buf, o);
          else v = buf.slice(o, o + t.bytes);
      }
      if (name[0] !== '_') out[name] = v;
    }
    return out as V;
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

  private encodeAt(v: V, base: number): void {
    const dv = SCRATCH_DV;
    const rec = v as Record<string, unknown>;
    for (let i = 0; i < this.fields.length; i++) {
      const [name, t] = this.fields[i];
      const o = base + this.offsets[i];
      const x = name[0] === '_' ? undefined : rec[name];
      switch (t) {
        case 'u8': dv.setUint8(o, Number(x ?? 0)); break;
        case 'u16': dv.setUint16(o, Number(x ?? 0), true); break;
        case 'u32': dv.setUint32(o, Number(x ?? 0) >>> 0, true); break;
        case 'i32': dv.setInt32(o, Number(x ?? 0), true); break;
        case 'u64': case 'i64': {
          const n = Math.trunc(Number(x ?? 0));
          // Two 32-bit halves: no BigInt on the common path (|n| < 2^53 is exact either way).
          const lo = n % TWO32;
          const hi = Math.floor(n / TWO32);
          dv.setUint32(o, lo < 0 ? lo + TWO32 : lo, true);
          dv.setInt32(o + 4, hi, true);
          break;
        }
        case 'b64': dv.setBigUint64(o, BigInt.asUintN(64, (x as bigint | undefined) ?? 0n), true); break;
        default:
          if (t instanceof Struct) {
            if (x === undefined) SCRATCH.fill(0, o, o + t.size);
            else t.encodeAt(x, o);
          } else {
            SCRATCH.fill(0, o, o + t.bytes);
            if (x instanceof Uint8Array) SCRATCH.set(x.subarray(0, t.bytes), o);
          }
      }
    }
  }

  /** A fresh zero-filled buffer holding v. */
  pack(v: V): Uint8Array {
    const b = new Uint8Array(this.size);
    this.encode(v, b, 0);
    return b;
  }
}
