import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, openSync, closeSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  IoUring, IoVecArena, IOSQE_ASYNC, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, RWF_DSYNC,
} from '../../protocol/sys/uring.js';
import { mapAnonymous, type Mapping } from '../../protocol/sys/mem.js';
import { eventfd, eventfdRead, close } from '../../protocol/sys/fd.js';
import { Epoll, EPOLLIN } from '../../protocol/sys/epoll.js';

describe('io_uring', () => {
  let dir: string;
  let file: string;
  let fd: number;
  let ring: IoUring;
  let buf: Mapping;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-uring-'));
    file = join(dir, 'img');
    const init = Buffer.alloc(64 * 1024);
    for (let i = 0; i < init.length; i++) init[i] = i & 0xff;
    writeFileSync(file, init);
    fd = openSync(file, 'r+');
    ring = new IoUring(64);
    buf = mapAnonymous(1 << 20);
  });
  afterEach(() => {
    ring.close();
    buf.unmap();
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });

  const results = (): Map<number, number> => {
    const m = new Map<number, number>();
    ring.reap((u, r) => m.set(u, r));
    return m;
  };

  it('sets up rings with sane sizes', () => {
    expect(ring.sqEntries).toBe(64);
    expect(ring.cqEntries).toBe(128);
    expect(ring.sqSpace()).toBe(64);
  });

  it('reads and writes a single buffer, batching many SQEs per enter', () => {
    const addr = Number(buf.ptr);
    // 16 reads of 4 KiB each in one submit
    for (let i = 0; i < 16; i++) expect(ring.prepRead(fd, addr + i * 4096, 4096, i * 4096, 100 + i)).toBe(true);
    expect(ring.pending).toBe(16);
    expect(ring.submit(16)).toBe(16);
    const m = results();
    expect(m.size).toBe(16);
    for (let i = 0; i < 16; i++) expect(m.get(100 + i)).toBe(4096);
    expect(Buffer.from(buf.bytes.subarray(0, 65536)).equals(readFileSync(file))).toBe(true);

    buf.bytes.fill(0xab, 0, 8192);
    expect(ring.prepWrite(fd, addr, 8192, 4096, 7, RWF_DSYNC)).toBe(true);
    ring.submit(1);
    expect(results().get(7)).toBe(8192);
    const f = readFileSync(file);
    expect(f[4095]).toBe(4095 & 0xff);
    expect(f.subarray(4096, 12288).every((b) => b === 0xab)).toBe(true);
    expect(f[12288]).toBe(12288 & 0xff);
  });

  it('scatters and gathers with READV/WRITEV', () => {
    const arena = new IoVecArena(4, 8);
    const addr = Number(buf.ptr);
    try {
      // gather 3 pieces from scattered places into file offset 512
      buf.bytes.fill(1, 0, 512);
      buf.bytes.fill(2, 10000, 10000 + 1024);
      buf.bytes.fill(3, 50000, 50000 + 512);
      arena.set(2, 0, addr, 512);
      arena.set(2, 1, addr + 10000, 1024);
      arena.set(2, 2, addr + 50000, 512);
      ring.prepWritev(fd, arena.slotAddress(2), 3, 512, 1);
      ring.submit(1);
      expect(results().get(1)).toBe(2048);
      const f = readFileSync(file);
      expect(f.subarray(512, 1024).every((b) => b === 1)).toBe(true);
      expect(f.subarray(1024, 2048).every((b) => b === 2)).toBe(true);
      expect(f.subarray(2048, 2560).every((b) => b === 3)).toBe(true);
      // scatter it back into two buffers
      arena.set(3, 0, addr + 200000, 1536);
      arena.set(3, 1, addr + 300000, 512);
      ring.prepReadv(fd, arena.slotAddress(3), 2, 512, 2);
      ring.submit(1);
      expect(results().get(2)).toBe(2048);
      expect(Buffer.from(buf.bytes.subarray(200000, 201536)).equals(f.subarray(512, 2048))).toBe(true);
      expect(Buffer.from(buf.bytes.subarray(300000, 300512)).equals(f.subarray(2048, 2560))).toBe(true);
    } finally {
      arena.free();
    }
  });

  it('reports errors as negative errno in the CQE', () => {
    ring.prepRead(9999, Number(buf.ptr), 4096, 0, 5);
    ring.submit(1);
    expect(results().get(5)).toBe(-9); // EBADF
  });

  it('fsyncs and fallocates (punch hole, zero range)', () => {
    ring.prepFsync(fd, 1);
    ring.prepFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192, 2);
    ring.prepFallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 32768, 4096, 3);
    ring.submit(3);
    const m = results();
    expect(m.get(1)).toBe(0);
    expect(m.get(2)).toBe(0);
    expect(m.get(3)).toBe(0);
    const f = readFileSync(file);
    expect(f.length).toBe(65536);
    expect(f.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
    expect(f.subarray(32768, 36864).every((b) => b === 0)).toBe(true);
    expect(f[4095]).toBe(0xff);
    expect(f[12288]).toBe(0);
    expect(f[12289]).toBe(1);
    expect(statSync(file).size).toBe(65536);
  });

  it('handles a full SQ and more completions than one batch', () => {
    const addr = Number(buf.ptr);
    let total = 0;
    for (let round = 0; round < 5; round++) {
      let n = 0;
      while (ring.prepRead(fd, addr + (n % 16) * 4096, 4096, (n % 16) * 4096, n)) n++;
      expect(n).toBe(64);
      expect(ring.sqSpace()).toBe(0);
      ring.submit(64);
      total += ring.reap((_, r) => expect(r).toBe(4096));
    }
    expect(total).toBe(320);
  });

  it('reaps completions that overflowed the CQ ring (held on the kernel\'s list) in the same reap', () => {
    const small = new IoUring(8, { cqEntries: 8 });
    try {
      // Three SQ-fuls of NOPs before any reap: 24 completions for 8 CQ slots.
      for (let round = 0; round < 3; round++) {
        for (let k = 0; k < 8; k++) expect(small.prepNop(round * 8 + k)).toBe(true);
        small.submit(0);
      }
      const seen = new Set<number>();
      small.reap((ud) => void seen.add(ud));
      expect(seen.size).toBe(24);
      expect(small.cqReady()).toBe(0);
    } finally {
      small.close();
    }
  });

  it('signals a registered eventfd that wakes epoll', () => {
    const efd = eventfd();
    const ep = new Epoll(4);
    try {
      ring.registerEventfd(efd);
      ep.add(efd, EPOLLIN, 42);
      expect(ep.wait(0)).toBe(0);
      ring.prepNop(1);
      ring.prepRead(fd, Number(buf.ptr), 512, 0, 2);
      ring.submit(0);
      const n = ep.wait(1000);
      expect(n).toBe(1);
      expect(ep.tokens[0]).toBe(42);
      expect(eventfdRead(efd)).toBeGreaterThan(0);
      let seen = 0;
      // completions may trickle in; keep reaping until both came
      for (let i = 0; i < 100 && seen < 2; i++) {
        seen += ring.reap(() => {});
        if (seen < 2) ep.wait(10);
      }
      expect(seen).toBe(2);
      ring.unregisterEventfd();
    } finally {
      ep.close();
      close(efd);
    }
  });

  it('COOP_TASKRUN: io-wq completions reach a thread that only polls, and wake one asleep in epoll', () => {
    const coop = new IoUring(16, { coopTaskrun: true });
    const efd = eventfd();
    const ep = new Epoll(4);
    try {
      expect(coop.coopTaskrun).toBe(true); // kernel 5.19+
      const addr = Number(buf.ptr);
      for (let round = 0; round < 20; round++) {
        buf.bytes.fill(0, 0, 4096);
        coop.prepRead(fd, addr, 4096, 4096 * (round % 16), round, 0, IOSQE_ASYNC);
        coop.submit(0);
        // Busy-poll as the queue workers do: cqReady() must enter the kernel itself when work is pending.
        const until = Date.now() + 2000;
        while (coop.cqReady() === 0 && Date.now() < until);
        const got: number[] = [];
        coop.reap((u, r) => got.push(u, r));
        expect(got).toEqual([round, 4096]);
        expect(buf.bytes[0]).toBe(0);
        expect(buf.bytes[1]).toBe(1);
      }
      coop.registerEventfd(efd);
      ep.add(efd, EPOLLIN, 7);
      coop.prepRead(fd, addr, 4096, 0, 99, 0, IOSQE_ASYNC);
      coop.submit(0);
      let woke = 0;
      for (let i = 0; i < 10 && woke === 0; i++) woke = ep.wait(1000);
      expect(woke).toBe(1);
      expect(coop.reap(() => {})).toBe(1);
    } finally {
      ep.close();
      close(efd);
      coop.close();
    }
  });
});
