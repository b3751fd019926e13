import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import {
  ChainError,
  compactLayout,
  DeviceQueue,
  readFromChain,
  VirtqueueError,
  writeToChain,
  VIRTQ_DESC_F_INDIRECT as IND,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
  type QueueLayout,
} from '../../protocol/virtqueue/index.js';
import { mmap, munmap, memfdCreate, ftruncate, viewOf, PROT_NONE, PROT_READ, PROT_WRITE, MAP_SHARED } from '../../protocol/sys/mem.js';
import { close } from '../../protocol/sys/fd.js';
import { offer, writeDesc } from './virtqueue-helpers.js';

const GUARD = 0x5a;
const RAM = 0x10000;
const QSIZE = 16;
const BUF = 0x1000;

/** A 64 KiB region at gpa 0 inside a bigger buffer filled with guard bytes. */
function guardedMemory() {
  const backing = new Uint8Array(RAM + 2 * 4096).fill(GUARD);
  const ram = backing.subarray(4096, 4096 + RAM);
  ram.fill(0);
  const mem = GuestMemory.fromViews([{ guestAddr: 0, bytes: ram }]);
  const guardsIntact = () => backing.subarray(0, 4096).every((b) => b === GUARD) && backing.subarray(4096 + RAM).every((b) => b === GUARD);
  return { mem, guardsIntact };
}

function catchErr(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

type Craft = (mem: GuestMemory, l: QueueLayout) => void;

/** Each case writes a chain at head 0 (or corrupts the ring) and expects pop() to throw. */
const hostile: [string, Craft, RegExp][] = [
  ['descriptor loop', (m, l) => {
    writeDesc(m, l.descAddr, 0, BUF, 16, NEXT, 1);
    writeDesc(m, l.descAddr, 1, BUF, 16, NEXT, 0);
  }, /loop/],
  ['self loop', (m, l) => writeDesc(m, l.descAddr, 0, BUF, 16, NEXT, 0), /loop/],
  ['address outside memory', (m, l) => writeDesc(m, l.descAddr, 0, RAM + 0x100, 16, 0), /outside guest memory/],
  ['address just past the end', (m, l) => writeDesc(m, l.descAddr, 0, RAM, 1, 0), /outside guest memory/],
  ['address + len crossing the region end', (m, l) => writeDesc(m, l.descAddr, 0, RAM - 8, 16, WRITE), /outside guest memory/],
  ['address >= 2^53', (m, l) => writeDesc(m, l.descAddr, 0, 2 ** 53, 16, 0), /outside guest memory/],
  ['huge len', (m, l) => writeDesc(m, l.descAddr, 0, BUF, 0xffff_ffff, 0), /outside guest memory/],
  ['next index >= queue size', (m, l) => writeDesc(m, l.descAddr, 0, BUF, 16, NEXT, QSIZE), /next index out of range/],
  ['readable after writable', (m, l) => {
    writeDesc(m, l.descAddr, 0, BUF, 16, WRITE | NEXT, 1);
    writeDesc(m, l.descAddr, 1, BUF + 16, 16, 0);
  }, /readable descriptor after a device-writable/],
  ['readable (zero length) after writable', (m, l) => {
    writeDesc(m, l.descAddr, 0, BUF, 16, WRITE | NEXT, 1);
    writeDesc(m, l.descAddr, 1, BUF + 16, 0, 0);
  }, /readable descriptor after a device-writable/],
  ['indirect inside indirect', (m, l) => {
    writeDesc(m, l.descAddr, 0, 0x2000, 32, IND);
    writeDesc(m, 0x2000, 0, BUF, 16, NEXT, 1);
    writeDesc(m, 0x2000, 1, 0x3000, 16, IND);
  }, /indirect descriptor inside an indirect table/],
  ['indirect NEXT pointing out of the table', (m, l) => {
    writeDesc(m, l.descAddr, 0, 0x2000, 32, IND);
    writeDesc(m, 0x2000, 0, BUF, 16, NEXT, 1);
    writeDesc(m, 0x2000, 1, BUF + 16, 16, NEXT, 2);
  }, /next index out of range/],
  ['indirect table loop', (m, l) => {
    writeDesc(m, l.descAddr, 0, 0x2000, 48, IND);
    writeDesc(m, 0x2000, 0, BUF, 16, NEXT, 1);
    writeDesc(m, 0x2000, 1, BUF, 16, NEXT, 2);
    writeDesc(m, 0x2000, 2, BUF, 16, NEXT, 1);
  }, /loop/],
  ['indirect descriptor with NEXT', (m, l) => {
    writeDesc(m, l.descAddr, 0, 0x2000, 16, IND | NEXT, 1);
    writeDesc(m, 0x2000, 0, BUF, 16, 0);
  }, /indirect descriptor with NEXT/],
  ['indirect table length not a multiple of 16', (m, l) => writeDesc(m, l.descAddr, 0, 0x2000, 24, IND), /multiple of 16/],
  ['indirect table of length 0', (m, l) => writeDesc(m, l.descAddr, 0, 0x2000, 0, IND), /multiple of 16/],
  ['indirect table outside memory', (m, l) => writeDesc(m, l.descAddr, 0, RAM - 16, 32, IND), /indirect table is outside/],
  ['indirect table too large', (m, l) => writeDesc(m, l.descAddr, 0, 0, 16 * 65537, IND), /too many entries/],
  ['indirect entry outside memory', (m, l) => {
    writeDesc(m, l.descAddr, 0, 0x2000, 16, IND);
    writeDesc(m, 0x2000, 0, RAM + 4096, 16, WRITE);
  }, /outside guest memory/],
];

describe('DeviceQueue refuses hostile chains', () => {
  const { mem, guardsIntact } = guardedMemory();
  const layout = compactLayout(0, QSIZE);

  beforeEach(() => mem.fill(0, RAM));
  afterAll(() => expect(guardsIntact()).toBe(true));

  it.each(hostile)('%s', (_name, craft, msg) => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    craft(mem, layout);
    offer(mem, layout, 0);
    const e = catchErr(() => q.pop());
    expect(e).toBeInstanceOf(ChainError);
    expect(e).toBeInstanceOf(VirtqueueError);
    expect((e as Error).message).toMatch(msg);
    expect((e as ChainError).head).toBe(0);
    // The bad head was consumed: the device can return it and the next good chain still pops.
    q.pushUsed(0, 0);
    q.publishUsed();
    writeDesc(mem, layout.descAddr, 5, BUF, 8, 0);
    offer(mem, layout, 5);
    const c = q.pop();
    expect(c?.head).toBe(5);
    expect(c?.readable).toEqual([{ addr: BUF, len: 8 }]);
    expect(guardsIntact()).toBe(true);
  });

  // A device answers a refused request in its own status field where that is still guest memory (blk: the last
  // writable byte; virtio-fs: the reply header): the whole descriptor, or null when it is outside too.
  it('reports which answering descriptors lie in guest memory when a buffer does not', () => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    const pop = () => catchErr(() => q.pop()) as ChainError;
    writeDesc(mem, layout.descAddr, 0, BUF, 16, NEXT, 1);
    writeDesc(mem, layout.descAddr, 1, RAM + 4096, 512, NEXT, 2);
    writeDesc(mem, layout.descAddr, 2, BUF + 64, 1, WRITE);
    offer(mem, layout, 0);
    let e = pop();
    expect(e.message).toMatch(/outside guest memory/);
    expect(e.reach).toEqual({ firstReadable: { addr: BUF, len: 16 }, firstWritable: { addr: BUF + 64, len: 1 }, lastWritable: { addr: BUF + 64, len: 1 } });
    q.pushUsed(0, 0);
    // The status byte itself outside memory (2^53 up, too): nothing to answer through.
    writeDesc(mem, layout.descAddr, 3, BUF, 16, NEXT, 4);
    writeDesc(mem, layout.descAddr, 4, BUF + 64, 512, WRITE | NEXT, 6);
    writeDesc(mem, layout.descAddr, 6, 2 ** 53, 1, WRITE);
    offer(mem, layout, 3);
    e = pop();
    expect(e.reach).toEqual({ firstReadable: { addr: BUF, len: 16 }, firstWritable: { addr: BUF + 64, len: 512 }, lastWritable: null });
    q.pushUsed(3, 0);
    // The first writable descriptor beyond 2^53: no first writable buffer to answer in (not the second one).
    writeDesc(mem, layout.descAddr, 8, BUF, 16, NEXT, 9);
    writeDesc(mem, layout.descAddr, 9, 2 ** 53, 16, WRITE | NEXT, 10);
    writeDesc(mem, layout.descAddr, 10, BUF + 64, 16, WRITE);
    offer(mem, layout, 8);
    e = pop();
    expect(e.reach).toEqual({ firstReadable: { addr: BUF, len: 16 }, firstWritable: null, lastWritable: { addr: BUF + 64, len: 16 } });
    q.pushUsed(8, 0);
    // A chain whose shape is bad as well says nothing of its buffers.
    writeDesc(mem, layout.descAddr, 7, RAM + 4096, 16, NEXT, 7);
    offer(mem, layout, 7);
    e = pop();
    expect(e.message).toMatch(/loop/);
    expect(e.reach).toBe(null);
  });

  it('too many descriptors for maxChainLength', () => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false, maxChainLength: 3 });
    for (let i = 0; i < 4; i++) writeDesc(mem, layout.descAddr, i, BUF + i * 16, 16, i < 3 ? NEXT : 0, i + 1);
    offer(mem, layout, 0);
    expect(catchErr(() => q.pop())).toBeInstanceOf(ChainError);
  });

  it('a chain as long as the queue is fine, one step longer is a loop', () => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    for (let i = 0; i < QSIZE; i++) writeDesc(mem, layout.descAddr, i, BUF + i * 16, 16, i < QSIZE - 1 ? NEXT : 0, i + 1);
    offer(mem, layout, 0);
    expect(q.pop()?.readable.length).toBe(QSIZE);
    writeDesc(mem, layout.descAddr, QSIZE - 1, BUF, 16, NEXT, 0);
    offer(mem, layout, 0);
    expect(catchErr(() => q.pop())).toBeInstanceOf(ChainError);
  });

  it('head index >= queue size: nothing to give back, and the chains around it are served and published', () => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    writeDesc(mem, layout.descAddr, 5, BUF, 8, 0);
    offer(mem, layout, 5);
    offer(mem, layout, QSIZE);
    expect(q.pop()?.head).toBe(5);
    q.pushUsed(5, 0);
    const e = catchErr(() => q.pop());
    expect(e).toBeInstanceOf(ChainError);
    expect((e as Error).message).toMatch(/head index out of range/);
    // pushUsed(e.head) threw here, and the batch's publishUsed() never ran: the reply for head 5 stayed hidden.
    expect(q.returnMalformed(e as ChainError)).toBe(false);
    q.publishUsed();
    expect(mem.readU16(layout.usedAddr + 2)).toBe(1);
  });

  it('avail idx jumping more than the queue size ahead is a queue error', () => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    mem.writeU16(layout.availAddr + 2, QSIZE + 1);
    const e = catchErr(() => q.pop());
    expect(e).toBeInstanceOf(VirtqueueError);
    expect(e).not.toBeInstanceOf(ChainError);
    expect(q.nextAvailIdx).toBe(0);
    // Exactly `size` pending is legal.
    mem.writeU16(layout.availAddr + 2, QSIZE);
    writeDesc(mem, layout.descAddr, 0, BUF, 16, 0);
    expect(q.pop()?.head).toBe(0);
  });

  it('chain total length over 2^32-1 bytes', () => {
    // Two sparse 2.5 GiB memfd regions: each descriptor is in bounds, together they overflow a u32.
    const big = 2.5 * 2 ** 30;
    const m = GuestMemory.anonymous([{ guestAddr: 0, size: RAM }, { guestAddr: 2 ** 32, size: big }, { guestAddr: 2 ** 33, size: big }]);
    try {
      const q = new DeviceQueue(m, layout, { eventIdx: false });
      writeDesc(m, layout.descAddr, 0, 2 ** 32, big, NEXT, 1);
      writeDesc(m, layout.descAddr, 1, 2 ** 33, big, WRITE);
      offer(m, layout, 0);
      const e = catchErr(() => q.pop());
      expect(e).toBeInstanceOf(ChainError);
      expect((e as Error).message).toMatch(/longer than 2\^32-1 bytes/);
    } finally {
      m.close();
    }
  });

  it('refuses rings outside memory and misaligned layouts', () => {
    expect(catchErr(() => new DeviceQueue(mem, { size: 16, descAddr: RAM - 128, availAddr: 0x1000, usedAddr: 0x2000 }, { eventIdx: false }))).toBeInstanceOf(VirtqueueError);
    expect(catchErr(() => new DeviceQueue(mem, { size: 16, descAddr: 8, availAddr: 0x1000, usedAddr: 0x2000 }, { eventIdx: false }))).toBeInstanceOf(VirtqueueError);
    expect(catchErr(() => new DeviceQueue(mem, { size: 16, descAddr: 0, availAddr: 0x1001, usedAddr: 0x2000 }, { eventIdx: false }))).toBeInstanceOf(VirtqueueError);
    expect(catchErr(() => new DeviceQueue(mem, { size: 16, descAddr: 0, availAddr: 0x1000, usedAddr: 0x2002 }, { eventIdx: false }))).toBeInstanceOf(VirtqueueError);
    expect(catchErr(() => new DeviceQueue(mem, { size: 12, descAddr: 0, availAddr: 0x1000, usedAddr: 0x2000 }, { eventIdx: false }))).toBeInstanceOf(VirtqueueError);
  });

  it('refuses rings whose host addresses are misaligned though their guest addresses are not (mmap_offset 1)', () => {
    const fd = memfdCreate('vq-offset');
    ftruncate(fd, 0x10000);
    // A front-end's region starting one byte into its file: guest 0x2000 is host page + 0x2001.
    const m = GuestMemory.fromRegions([{ guestAddr: 0, size: 0x8000, fd, fdOffset: 1, userAddr: 0 }], { seal: false });
    try {
      const e = catchErr(() => new DeviceQueue(m, { size: 16, descAddr: 0, availAddr: 0x1000, usedAddr: 0x2000 }, { eventIdx: false }));
      expect(e).toBeInstanceOf(VirtqueueError);
      expect((e as Error).message).toMatch(/misaligned/);
    } finally {
      m.close();
    }
  });
});

describe('hostile chains against memory fenced by PROT_NONE pages', () => {
  // Guest RAM is a memfd page mapped between two inaccessible pages: any host access outside the
  // region would kill this process with SIGSEGV instead of passing silently.
  const PAGE = 4096;
  const MAP_PRIVATE_ANON = 0x02 | 0x20;
  const MAP_FIXED = 0x10;
  const size = 4 * PAGE;
  const fence = mmap(null, size + 2 * PAGE, PROT_NONE, MAP_PRIVATE_ANON, -1, 0);
  const fd = memfdCreate('vq-fenced');
  ftruncate(fd, size);
  const base = mmap(fence + BigInt(PAGE), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  const mem = GuestMemory.fromViews([{ guestAddr: 0, bytes: viewOf(base, size), ptr: base }]);
  const layout = compactLayout(0, QSIZE);
  afterAll(() => {
    munmap(fence, size + 2 * PAGE);
    close(fd);
  });

  it.each(hostile)('%s', (_name, craft) => {
    mem.fill(0, size);
    const q = new DeviceQueue(mem, layout, { eventIdx: true });
    // Adjust cases written for 64 KiB of RAM: anything they place beyond this smaller region is out of bounds too.
    try {
      craft(mem, layout);
    } catch {
      return; // the crafted table itself does not fit this smaller memory; nothing to test
    }
    offer(mem, layout, 0);
    expect(catchErr(() => q.pop())).toBeInstanceOf(VirtqueueError);
  });

  it('copies in and out of a valid chain stay inside the region', () => {
    mem.fill(0, size);
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    writeDesc(mem, layout.descAddr, 0, size - 32, 16, NEXT, 1);
    writeDesc(mem, layout.descAddr, 1, size - 16, 16, WRITE);
    mem.write(size - 32, new Uint8Array(16).fill(3));
    offer(mem, layout, 0);
    const c = q.pop()!;
    const buf = new Uint8Array(64);
    expect(readFromChain(mem, c.readable, 0, buf)).toBe(16);
    expect(writeToChain(mem, c.writable, 0, new Uint8Array(64).fill(9))).toBe(16);
    expect(mem.readU8(size - 1)).toBe(9);
    expect(catchErr(() => mem.hostPtr(size - 8, 16))).toBeDefined();
  });
});

describe('a buffer over more than one memory region', () => {
  // Regions [0, 64K) and [64K, 128K) back to back, then [192K, 256K) after a hole.
  const mem = GuestMemory.fromViews([
    { guestAddr: 0, bytes: new Uint8Array(RAM) },
    { guestAddr: RAM, bytes: new Uint8Array(RAM) },
    { guestAddr: 3 * RAM, bytes: new Uint8Array(RAM) },
  ]);
  const layout = compactLayout(0, QSIZE);

  it('is served piecewise where the regions lie back to back (NUMA nodes, DIMMs), and data crosses intact', () => {
    const q = new DeviceQueue(mem, layout, { eventIdx: false });
    writeDesc(mem, layout.descAddr, 0, RAM - 2048, 4096, NEXT, 1);
    writeDesc(mem, layout.descAddr, 1, 2 * RAM - 200, 100, WRITE, 0);
    const data = Uint8Array.from({ length: 4096 }, (_, k) => k & 0xff);
    mem.write(RAM - 2048, data.subarray(0, 2048));
    mem.write(RAM, data.subarray(2048));
    offer(mem, layout, 0);
    const c = q.pop();
    expect(c?.readable).toEqual([{ addr: RAM - 2048, len: 2048 }, { addr: RAM, len: 2048 }]);
    expect(c?.readableLength).toBe(4096);
    const got = new Uint8Array(4096);
    expect(readFromChain(mem, c?.readable ?? [], 0, got)).toBe(4096);
    expect(got).toEqual(data);
    q.pushUsed(0, 0);
    // One that runs from the second region into the hole is outside memory, as before.
    writeDesc(mem, layout.descAddr, 2, 2 * RAM - 100, 200, WRITE, 0);
    offer(mem, layout, 2);
    expect((catchErr(() => q.pop()) as Error).message).toMatch(/outside guest memory/);
  });
});
