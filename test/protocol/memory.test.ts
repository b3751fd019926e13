import { describe, expect, it } from 'vitest';
import { GuestMemory, GuestMemoryError } from '../../protocol/memory/index.js';
import { mapFd, memfdCreate, ftruncate } from '../../protocol/sys/mem.js';
import { close, openFile, O_RDWR, pipe2 } from '../../protocol/sys/fd.js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const GUARD = 0xa5;

/** Two regions carved out of one buffer with guard bytes around them. */
function guarded() {
  const backing = new Uint8Array(3 * 4096).fill(GUARD);
  const a = backing.subarray(1024, 1024 + 4096); // gpa 0x0000..0x1000
  const b = backing.subarray(6144, 6144 + 4096); // gpa 0x10000..0x11000
  a.fill(0);
  b.fill(0);
  const mem = GuestMemory.fromViews([
    { guestAddr: 0, bytes: a },
    { guestAddr: 0x10000, bytes: b, userAddr: 0x7f00_0000_0000 },
  ]);
  const guardsIntact = () =>
    backing.subarray(0, 1024).every((x) => x === GUARD) &&
    backing.subarray(1024 + 4096, 6144).every((x) => x === GUARD) &&
    backing.subarray(6144 + 4096).every((x) => x === GUARD);
  return { mem, backing, guardsIntact };
}

function expectMemErr(f: () => unknown, ctx?: Record<string, unknown>) {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(GuestMemoryError);
  if (ctx) expect((err as GuestMemoryError).context).toMatchObject(ctx);
}

describe('GuestMemory bounds', () => {
  it('slices zero-copy inside a region', () => {
    const { mem } = guarded();
    const s = mem.slice(0x10010, 16);
    s[0] = 7;
    expect(mem.readU8(0x10010)).toBe(7);
    expect(mem.slice(0, 4096).length).toBe(4096);
    expect(mem.slice(0x1000, 0).length).toBe(0);
  });

  it('refuses ranges outside or crossing a region end, with gpa/len context', () => {
    const { mem, guardsIntact } = guarded();
    expectMemErr(() => mem.slice(0xfff, 2), { gpa: 0xfff, len: 2 });
    expectMemErr(() => mem.slice(0x2000, 1), { gpa: 0x2000, len: 1 });
    expectMemErr(() => mem.slice(0x10ff0, 0x20), { gpa: 0x10ff0, len: 0x20 });
    expectMemErr(() => mem.slice(-1, 1));
    expectMemErr(() => mem.slice(0, -1));
    expectMemErr(() => mem.slice(0.5, 1));
    expectMemErr(() => mem.slice(Number.MAX_SAFE_INTEGER, 1));
    expectMemErr(() => mem.slice(2 ** 60, 1));
    expectMemErr(() => mem.readU32(0xffe));
    expectMemErr(() => mem.writeU64(0x10ffc, 1));
    expectMemErr(() => mem.write(0xff0, new Uint8Array(0x20).fill(1)));
    expectMemErr(() => mem.read(0x10ff8, new Uint8Array(9)));
    expectMemErr(() => mem.fill(0x800, 0x900, 1));
    expectMemErr(() => mem.hostPtr(0, 1)); // views without a host address
    expect(mem.contains(0xfff, 1)).toBe(true);
    expect(mem.contains(0xfff, 2)).toBe(false);
    // The same answers once a lookup has cached the first region (contains() asks it first).
    mem.slice(0, 1);
    expect(mem.contains(0xfff, 1)).toBe(true);
    expect(mem.contains(0xfff, 2)).toBe(false);
    expect(mem.contains(-1, 1)).toBe(false);
    expect(mem.contains(0, -1)).toBe(false);
    expect(mem.contains(0.5, 1)).toBe(false);
    expect(mem.contains(0x10ff0, 0x10)).toBe(true);
    expect(mem.contains(0x10ff0, 0x20)).toBe(false);
    expect(guardsIntact()).toBe(true);
  });

  it('reads and writes little-endian integers, u64 with a range check', () => {
    const { mem } = guarded();
    mem.writeU16(0x10, 0xbeef);
    mem.writeU32(0x20, 0xdeadbeef);
    mem.writeU64(0x30, 2 ** 53 - 1);
    expect(mem.readU16(0x10)).toBe(0xbeef);
    expect(mem.readU32(0x20)).toBe(0xdeadbeef);
    expect(mem.readU64(0x30)).toBe(2 ** 53 - 1);
    expect(mem.slice(0x20, 4)).toEqual(Uint8Array.of(0xef, 0xbe, 0xad, 0xde));
    mem.writeU64Big(0x40, 0xffff_ffff_ffff_ffffn);
    expect(mem.readU64Big(0x40)).toBe(0xffff_ffff_ffff_ffffn);
    expectMemErr(() => mem.readU64(0x40));
    expectMemErr(() => mem.writeU64(0x40, 2 ** 53));
    expectMemErr(() => mem.writeU64(0x40, -1));
  });

  it('translates front-end user addresses', () => {
    const { mem } = guarded();
    expect(mem.userToGuest(0x7f00_0000_0010, 16)).toBe(0x10010);
    expect(mem.userToGuest(0x100, 4)).toBe(0x100);
    expectMemErr(() => mem.userToGuest(0x7f00_0000_0ff0, 0x20));
  });

  it('refuses overlapping regions', () => {
    const a = new Uint8Array(4096);
    const b = new Uint8Array(4096);
    expectMemErr(() => GuestMemory.fromViews([{ guestAddr: 0, bytes: a }, { guestAddr: 0x800, bytes: b }]));
    expectMemErr(() => GuestMemory.fromViews([{ guestAddr: 0, bytes: a, userAddr: 0x10000 }, { guestAddr: 0x8000, bytes: b, userAddr: 0x10800 }]));
    expect(() => GuestMemory.fromViews([{ guestAddr: 0, bytes: a }, { guestAddr: 0x1000, bytes: b }])).not.toThrow();
  });
});

describe('GuestMemory chunked views (the >1 GiB path, scaled down)', () => {
  // 4 chunks of 4 KiB with 64 bytes of overlap stand in for 1 GiB chunks.
  const mk = () => {
    const bytes = new Uint8Array(16384);
    for (let i = 0; i < bytes.length; i++) bytes[i] = i & 0xff;
    return GuestMemory.fromViews([{ guestAddr: 0x100000, bytes }], { chunkSize: 4096, overlap: 64 });
  };

  it('slices across a chunk boundary within the overlap, refuses longer ones', () => {
    const mem = mk();
    expect(mem.regions[0].chunks.length).toBe(4);
    const s = mem.slice(0x100000 + 4096 - 8, 32);
    expect(Array.from(s.subarray(0, 10))).toEqual([248, 249, 250, 251, 252, 253, 254, 255, 0, 1]);
    expectMemErr(() => mem.slice(0x100000 + 4096 - 8, 100));
    expect(() => mem.regions[0].bytes).toThrow(GuestMemoryError);
  });

  it('dataView() gives the chunk view a range lies in and where it starts there, without a new view; null past the overlap', () => {
    const mem = mk();
    const base = 0x100000;
    const dv = mem.dataView(base + 2 * 4096 + 100, 16);
    expect(dv).toBe(mem.regions[0].dataViews[2]);
    expect(mem.viewOffset).toBe(100);
    expect(dv!.getUint8(mem.viewOffset)).toBe(100);
    // Starts in chunk 0 and runs into the overlap: still chunk 0's view.
    expect(mem.dataView(base + 4096 - 8, 32)).toBe(mem.regions[0].dataViews[0]);
    expect(mem.viewOffset).toBe(4096 - 8);
    expect(mem.dataView(base + 4096 - 8, 100)).toBeNull();
    expectMemErr(() => mem.dataView(base + 16384 - 8, 16), { gpa: base + 16384 - 8, len: 16 });
  });

  it('an empty range at the very end of a region of whole chunks is a no-op (an empty initramfs, a zero-length descriptor)', () => {
    const mem = mk();
    const end = 0x100000 + 16384;
    expect(() => mem.write(end, new Uint8Array(0))).not.toThrow();
    expect(() => mem.read(end, new Uint8Array(0))).not.toThrow();
    expect(mem.slice(end, 0).length).toBe(0);
  });

  it('small integer accesses straddling a chunk boundary work', () => {
    const mem = mk();
    mem.writeU64(0x100000 + 8192 - 4, 0x1122334455667);
    expect(mem.readU64(0x100000 + 8192 - 4)).toBe(0x1122334455667);
    expect(mem.readU8(0x100000 + 8192 + 2)).toBe(0x01);
  });

  it('segments() covers a long range piecewise and read/write copy across chunks', () => {
    const mem = mk();
    const segs = [...mem.segments(0x100000 + 100, 10000)];
    expect(segs.length).toBeGreaterThan(1);
    let pos = 0x100000 + 100;
    for (const s of segs) {
      expect(s.gpa).toBe(pos);
      expect(s.bytes[0]).toBe((s.gpa - 0x100000) & 0xff);
      pos += s.bytes.length;
    }
    expect(pos).toBe(0x100000 + 100 + 10000);
    const src = new Uint8Array(9000).map((_, i) => (i * 7) & 0xff);
    mem.write(0x100000 + 3000, src);
    const dst = new Uint8Array(9000);
    mem.read(0x100000 + 3000, dst);
    expect(dst).toEqual(src);
    expectMemErr(() => [...mem.segments(0x100000 + 100, 20000)]);
  });

  it('short copies: inside a chunk, across a chunk end, and from a view of the same memory', () => {
    const mem = mk();
    const base = 0x100000;
    for (const [at, n] of [[10, 40], [4096 - 20, 40], [8192 - 1, 2], [100, 64], [5000, 65]]) {
      const src = new Uint8Array(n).map((_, i) => (i * 13 + 5) & 0xff);
      mem.write(base + at, src);
      const back = new Uint8Array(n);
      mem.read(base + at, back);
      expect(back).toEqual(src);
    }
    // Overlapping: copy [200, 240) to [210, 250) through a view of the same memory.
    const expected = Array.from(mem.slice(base + 200, 40));
    mem.write(base + 210, mem.slice(base + 200, 40));
    expect(Array.from(mem.slice(base + 210, 40))).toEqual(expected);
    const into = mem.slice(base + 300, 40);
    const want = Array.from(mem.slice(base + 290, 40));
    mem.read(base + 290, into);
    expect(Array.from(into)).toEqual(want);
  });
});

describe('GuestMemory over memfds', () => {
  it('anonymous() regions are shared memfds with host pointers', () => {
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }, { guestAddr: 2 ** 32, size: 2 << 20 }]);
    try {
      expect(mem.regions.length).toBe(2);
      const r = mem.regions[1];
      expect(r.fd).toBeGreaterThanOrEqual(0);
      expect(mem.hostPtr((2 ** 32) + 0x10, 16)).toBe(r.ptr + 0x10n);
      expect(mem.userToGuest(Number(r.ptr) + 5, 1)).toBe((2 ** 32) + 5);
      mem.write((2 ** 32) + 0x1234, new TextEncoder().encode('hello'));
      // A second, independent mapping of the same fd (what a backend does) sees the bytes.
      const other = mapFd(r.fd, 2 << 20);
      expect(new TextDecoder().decode(other.bytes.subarray(0x1234, 0x1239))).toBe('hello');
      other.bytes[0x10] = 42;
      expect(mem.readU8((2 ** 32) + 0x10)).toBe(42);
      other.unmap();
    } finally {
      mem.close();
    }
    expect(mem.regions.length).toBe(0);
    expectMemErr(() => mem.slice(0, 1));
  });

  it('fromRegions() maps received fds (including unaligned fd offsets) and owns them', () => {
    const fd = memfdCreate('memtest');
    ftruncate(fd, 3 * 4096);
    const writer = mapFd(fd, 3 * 4096);
    writer.bytes[4096 + 100] = 9;
    writer.bytes[4096 + 100 + 8] = 10;
    writer.unmap();
    const mem = GuestMemory.fromRegions([{ guestAddr: 0x8000, size: 4096, fd, fdOffset: 4096 + 100, userAddr: 0x1000 }]);
    expect(mem.readU8(0x8000)).toBe(9);
    expect(mem.readU8(0x8008)).toBe(10);
    expectMemErr(() => mem.slice(0x8000, 4097));
    mem.removeRegion(0x8000, 4096, 0x1000);
    expect(mem.regions.length).toBe(0);
    expect(() => close(fd)).toThrow(); // already closed by removeRegion
  });

  it('fromRegions() refuses overlaps and closes every fd it was given', () => {
    const fds = [memfdCreate('a'), memfdCreate('b')];
    for (const fd of fds) ftruncate(fd, 8192);
    expectMemErr(() =>
      GuestMemory.fromRegions([
        { guestAddr: 0, size: 8192, fd: fds[0], fdOffset: 0, userAddr: 0x100000 },
        { guestAddr: 4096, size: 4096, fd: fds[1], fdOffset: 0, userAddr: 0x200000 },
      ]),
    );
    for (const fd of fds) expect(() => close(fd)).toThrow();
  });

  it('fromRegions() refuses a region that runs past the end of its file (touching it would SIGBUS)', () => {
    const fd = memfdCreate('short');
    ftruncate(fd, 4096);
    expectMemErr(() => GuestMemory.fromRegions([{ guestAddr: 0, size: 2 * 4096, fd, fdOffset: 0, userAddr: 0x100000 }]), { fileSize: 4096 });
    expect(() => close(fd)).toThrow(); // closed on refusal, like the overlap case
    const fd2 = memfdCreate('offset');
    ftruncate(fd2, 2 * 4096);
    expectMemErr(() => GuestMemory.fromRegions([{ guestAddr: 0, size: 4096, fd: fd2, fdOffset: 4097, userAddr: 0x100000 }]));
  });

  it('fromRegions() measures a block device and refuses fds whose size cannot be known (a pipe, /dev/zero)', () => {
    const [r, w] = pipe2();
    expectMemErr(() => GuestMemory.fromRegions([{ guestAddr: 0, size: 4096, fd: r, fdOffset: 0, userAddr: 0x100000 }]), { mode: '10600' });
    close(w);
    const zero = openFile('/dev/zero', O_RDWR);
    expectMemErr(() => GuestMemory.fromRegions([{ guestAddr: 0, size: 4096, fd: zero, fdOffset: 0, userAddr: 0x100000 }]));
    // A 1 MiB loop device: fstat says 0 bytes, and a 64 MiB region on it used to be mapped and SIGBUS when touched.
    if (process.getuid?.() !== 0) return console.log('not root: no loop device to map');
    const dir = mkdtempSync('/tmp/kumo-mem-blk-');
    writeFileSync(join(dir, 'img'), Buffer.alloc(1 << 20));
    const lo = spawnSync('losetup', ['-f', '--show', join(dir, 'img')], { encoding: 'utf8' });
    try {
      if (lo.status !== 0) throw new Error(`losetup failed: ${lo.stderr}`);
      const dev = lo.stdout.trim();
      const big = openFile(dev, O_RDWR);
      expectMemErr(() => GuestMemory.fromRegions([{ guestAddr: 0, size: 64 << 20, fd: big, fdOffset: 0, userAddr: 0x100000 }]), { fileSize: 1 << 20 });
      const fits = openFile(dev, O_RDWR);
      const mem = GuestMemory.fromRegions([{ guestAddr: 0, size: 1 << 20, fd: fits, fdOffset: 0, userAddr: 0x100000 }]);
      mem.writeU32((1 << 20) - 4, 0xfeedf00d);
      expect(mem.readU32((1 << 20) - 4)).toBe(0xfeedf00d);
      mem.close();
    } finally {
      if (lo.status === 0) spawnSync('losetup', ['-d', lo.stdout.trim()]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
