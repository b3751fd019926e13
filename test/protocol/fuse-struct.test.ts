import { describe, it, expect } from 'vitest';
import { Struct, AttrOut, EntryOut } from '../../protocol/fuse/index.js';

const Inner = Struct.of('inner', [['a', 'u16'], ['_pad', 'u16'], ['b', 'i32']] as const);
const Outer = Struct.of('outer', [
  ['u', 'u64'], ['i', 't64'], ['x', 'b64'], ['n', Inner], ['raw', { bytes: 6 }], ['k', 'u8'], ['_p', 'u8'],
] as const);

describe('FUSE struct codec', () => {
  it('round-trips 64-bit fields at their limits, nested structs and byte fields, little-endian', () => {
    for (const [u, i] of [[0, 0], [2 ** 53 - 1, -(2 ** 53 - 1)], [2 ** 32, -1], [0xffff_ffff, -(2 ** 32) - 5], [123, 2 ** 40 + 7]]) {
      const v = { u, i, x: 0xfedc_ba98_7654_3210n, n: { a: 0xbeef, b: -2 }, raw: Uint8Array.of(1, 2, 3), k: 9 };
      const buf = new Uint8Array(Outer.size + 3).fill(0xee);
      expect(Outer.encode(v, buf, 3)).toBe(3 + Outer.size);
      expect(buf.subarray(0, 3)).toEqual(Uint8Array.of(0xee, 0xee, 0xee));
      const dv = new DataView(buf.buffer, 3);
      expect(dv.getBigUint64(0, true)).toBe(BigInt(u));
      expect(dv.getBigInt64(8, true)).toBe(BigInt(i));
      expect(Outer.decode(buf, 3)).toEqual({ ...v, raw: Uint8Array.of(1, 2, 3, 0, 0, 0) });
    }
  });

  it('zero-fills padding and absent nested values; pack gives a fresh buffer each time', () => {
    const a = Outer.pack({ u: 1, i: 2, x: 3n, n: { a: 1, b: 1 }, raw: new Uint8Array(6).fill(7), k: 1 });
    const b = EntryOut.pack({ nodeid: 5, generation: 0, entryValid: 1, attrValid: 1, entryValidNsec: 0, attrValidNsec: 0 } as never);
    expect(a).not.toBe(Outer.pack({ u: 1, i: 2, x: 3n, n: { a: 1, b: 1 }, raw: new Uint8Array(6), k: 1 }));
    expect(b.subarray(40)).toEqual(new Uint8Array(EntryOut.size - 40));
    expect(AttrOut.decode(AttrOut.pack(AttrOut.decode(new Uint8Array(AttrOut.size)))).attr.ino).toBe(0);
  });

  it('refuses 64-bit values a JS number cannot hold, naming the field', () => {
    const buf = Outer.pack({ u: 1, i: 2, x: 3n, n: { a: 1, b: 1 }, raw: new Uint8Array(6), k: 1 });
    const dv = new DataView(buf.buffer);
    dv.setUint32(4, 0x20_0000, true);
    expect(() => Outer.decode(buf)).toThrow(/outer\.u out of range/);
  });

  it('keeps signed t64 values (file times) exact beyond +-2^53 as bigints, numbers within', () => {
    for (const i of [2n ** 63n - 1n, -(2n ** 63n), 2n ** 53n + 1n, -(2n ** 53n) - 1n, 2n ** 53n, -(2n ** 53n)]) {
      const buf = Outer.pack({ u: 1, i, x: 3n, n: { a: 1, b: 1 }, raw: new Uint8Array(6), k: 1 });
      expect(new DataView(buf.buffer).getBigInt64(8, true)).toBe(i);
      const back = Outer.decode(buf).i;
      expect(BigInt(back)).toBe(i);
      expect(typeof back).toBe(i >= -(2n ** 53n) && i < 2n ** 53n ? 'number' : 'bigint');
    }
  });

  it('refuses a buffer too small', () => {
    expect(() => Inner.encode({ a: 1, b: 2 }, new Uint8Array(7))).toThrow(/no room for inner/);
    expect(() => Inner.decode(new Uint8Array(7))).toThrow(/inner truncated/);
  });
});
