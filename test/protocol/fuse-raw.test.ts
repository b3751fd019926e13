import { describe, it, expect } from 'vitest';
import {
  CreateIn, EntryOut, FlushIn, ForgetIn, FuseClient, FuseProtocolError, GetattrIn, Op, OpenOut, OutHeader, ReadIn, ReleaseIn, WriteIn,
  type FuseTransport,
} from '../../protocol/fuse/index.js';
import { RawFuseReply, RawFuseRequest } from '../../protocol/fuse/raw.js';

const noTransport: FuseTransport = { call: () => Promise.reject(new Error('unused')) };
const z = (s: string) => new TextEncoder().encode(`${s}\0`);

describe('raw FUSE requests and replies (load generators)', () => {
  // FuseClient.encode() through the Struct codec is the reference; the raw writer must produce the same bytes.
  const ref = new FuseClient(noTransport);
  const big = 2 ** 40 + 12345; // ids above 2^32 catch a dropped high word

  it('writes the same bytes as the struct codec for every request it knows, over stale slot contents', () => {
    const slot = new Uint8Array(8192).fill(0xa5);
    const raw = new RawFuseRequest(slot);
    const data = Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff);
    const cases: [() => number, Uint8Array][] = [
      [() => raw.lookup(7, big, z('data')), ref.encode(Op.LOOKUP, big, [z('data')], 7n)],
      [() => raw.getattr(8, big), ref.encode(Op.GETATTR, big, [GetattrIn.pack({ getattrFlags: 0, fh: 0 })], 8n)],
      [() => raw.forget(9, big, 1), ref.encode(Op.FORGET, big, [ForgetIn.pack({ nlookup: 1 })], 9n)],
      [() => raw.read(big, 5, big + 1, big + 2, 1 << 20),
        ref.encode(Op.READ, 5, [ReadIn.pack({ fh: big + 1, offset: big + 2, size: 1 << 20, readFlags: 0, lockOwner: 0n, flags: 0 })], BigInt(big))],
      [() => raw.write(11, 5, 3, 4096, data),
        ref.encode(Op.WRITE, 5, [WriteIn.pack({ fh: 3, offset: 4096, size: 4096, writeFlags: 0, lockOwner: 0n, flags: 0 }), data], 11n)],
      [() => raw.create(12, 1, z('f123'), 0o1101, 0o100644),
        ref.encode(Op.CREATE, 1, [CreateIn.pack({ flags: 0o1101, mode: 0o100644, umask: 0, openFlags: 0 }), z('f123')], 12n)],
      [() => raw.flush(13, 5, big), ref.encode(Op.FLUSH, 5, [FlushIn.pack({ fh: big, lockOwner: 0n })], 13n)],
      [() => raw.release(14, 5, big), ref.encode(Op.RELEASE, 5, [ReleaseIn.pack({ fh: big, flags: 0, releaseFlags: 0, lockOwner: 0n })], 14n)],
    ];
    for (const [write, want] of cases) {
      const len = write();
      expect(len).toBe(want.length);
      expect(slot.subarray(0, len)).toEqual(want);
    }
  });

  it('refuses a request larger than its buffer', () => {
    expect(() => new RawFuseRequest(new Uint8Array(100)).write(1, 1, 1, 0, new Uint8Array(64))).toThrow(FuseProtocolError);
  });

  it('checks a reply: length, unique and errno, and reads the entry nodeid and the CREATE handle', () => {
    const buf = new Uint8Array(16 + EntryOut.size + OpenOut.size);
    const rep = new RawFuseReply(buf);
    OutHeader.encode({ len: buf.length, error: 0, unique: BigInt(big) }, buf, 0);
    const view = new DataView(buf.buffer);
    view.setBigUint64(16, BigInt(big + 1), true);
    view.setBigUint64(16 + EntryOut.size, BigInt(big + 2), true);
    expect(rep.check(buf.length, big, 'CREATE')).toBe(EntryOut.size + OpenOut.size);
    expect(rep.entryNodeid()).toBe(big + 1);
    expect(rep.createFh()).toBe(big + 2);
    // The used length caps what the header claims.
    expect(rep.check(40, big, 'CREATE')).toBe(24);
    expect(() => rep.check(8, big, 'CREATE')).toThrow(/short FUSE reply/);
    expect(() => rep.check(buf.length, big + 1, 'CREATE')).toThrow(/another request/);
    OutHeader.encode({ len: 16, error: -2, unique: BigInt(big) }, buf, 0);
    expect(() => rep.check(16, big, 'LOOKUP')).toThrow(/LOOKUP failed: errno 2/);
  });
});
