import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { addressOf } from '../../protocol/sys/libc.js';
import { closeQuiet, IoVecList, openFile, O_DIRECT, O_RDONLY } from '../../protocol/sys/fd.js';
import { mapAnonymous } from '../../protocol/sys/mem.js';
import { IoOffload, SPLIT_MIN_BYTES } from '../../backends/virtiofsd/io-offload.js';

const KiB = 1024;
const dir = mkdtempSync('/dev/shm/kumo-split-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Destination pieces of uneven sizes, so the split point falls inside an iovec entry. */
function pieces(total: number): Buffer[] {
  const a = Math.floor(total / 3) + 777;
  return [Buffer.alloc(a, 0xee), Buffer.alloc(total - a - 4096, 0xee), Buffer.alloc(4096, 0xee)];
}

describe('IoOffload.readSplit: a lone large READ copied by two threads', () => {
  const offload = IoOffload.create(8, 0);
  if (offload === null) console.log(`no split READs here (${availableParallelism()} CPU(s) or no io_uring): READs stay inline`);

  it.skipIf(offload === null)('allows one io-wq worker per CPU beside the queue thread unless --thread-pool-size says otherwise', () => {
    expect((offload as IoOffload).workerCaps()[0]).toBe(availableParallelism() - 1);
    const three = IoOffload.create(8, 3) as IoOffload;
    try {
      expect(three.workerCaps()[0]).toBe(3);
    } finally {
      three.close();
    }
  });

  it.skipIf(offload === null)('spreads large READs over the copiers it has: this thread and the io-wq workers', () => {
    const offloaded = (o: IoOffload, n: number) => {
      o.moreQueued = true;
      const got = Array.from({ length: n }, () => o.wants(1024 * KiB));
      o.moreQueued = false;
      return got.filter(Boolean).length;
    };
    const big = IoOffload.create(8, 0, undefined, 16) as IoOffload; // 16 CPUs: 15 workers
    const kata = IoOffload.create(8, 1, undefined, 16) as IoOffload; // --thread-pool-size=1
    try {
      expect(offloaded(big, 32)).toBe(30);
      expect(offloaded(kata, 32)).toBe(16);
      expect(big.wants(64 * KiB)).toBe(false); // small: always this thread
    } finally {
      big.close();
      kata.close();
    }
  });

  it.skipIf(offload === null)('returns preadv\'s bytes and count, short at EOF in either half, errors as -errno', () => {
    const o = offload as IoOffload;
    const data = randomBytes(3 * 1024 * KiB + 12345);
    const path = join(dir, 'f');
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    try {
      const cases: [number, number][] = [
        [0, 1024 * KiB], // two full halves
        [4097, SPLIT_MIN_BYTES], // unaligned offset, smallest split size
        [data.length - 100 * KiB, 1024 * KiB], // EOF inside the first half
        [data.length - 700 * KiB, 1024 * KiB], // EOF inside the second half
        [data.length + 5, 512 * KiB], // past EOF: 0
      ];
      for (const [offset, size] of cases) {
        expect(o.wantsSplit(size, 0)).toBe(true);
        const bufs = pieces(size);
        const iov = new IoVecList(8);
        for (const b of bufs) iov.push(addressOf(b), b.length);
        const n = o.readSplit(fd, iov, offset);
        const want = data.subarray(Math.min(offset, data.length), Math.min(offset + size, data.length));
        expect(n).toBe(want.length);
        expect(Buffer.concat(bufs).subarray(0, n).equals(want)).toBe(true);
        expect(o.pending).toBe(0);
      }
      expect(o.wantsSplit(SPLIT_MIN_BYTES - 1, 0)).toBe(false);
      o.moreQueued = true;
      expect(o.wantsSplit(1024 * KiB, 0)).toBe(false); // with work queued, READs alternate instead
      o.moreQueued = false;
    } finally {
      closeSync(fd);
    }
    // O_DIRECT on a disk file system: a length off the block is EINVAL for the whole read, as preadv answers, even
    // though the first half (page-aligned length and buffer) alone would have been read (tmpfs checks no alignment).
    const diskDir = mkdtempSync('/var/tmp/kumo-split-');
    let dfd = -1;
    try {
      writeFileSync(join(diskDir, 'f'), data);
      dfd = openFile(join(diskDir, 'f'), O_RDONLY | O_DIRECT);
    } catch {
      console.log('no O_DIRECT on /var/tmp here: the misaligned O_DIRECT case is not run');
    }
    try {
      if (dfd >= 0) {
        const m = mapAnonymous(1024 * KiB);
        try {
          const size = 300_001;
          const iov = new IoVecList(1);
          iov.push(m.ptr, size);
          expect(o.wantsSplit(size, 0)).toBe(true);
          expect(o.readSplit(dfd, iov, 0)).toBe(-22);
          expect(o.pending).toBe(0);
          iov.clear();
          iov.push(m.ptr, 300 * 1024); // whole blocks: served
          expect(o.readSplit(dfd, iov, 0)).toBe(300 * 1024);
        } finally {
          m.unmap();
        }
      }
    } finally {
      if (dfd >= 0) closeQuiet(dfd);
      rmSync(diskDir, { recursive: true, force: true });
    }
    const wfd = openSync(join(dir, 'w'), 'w');
    try {
      const b = Buffer.alloc(SPLIT_MIN_BYTES);
      const iov = new IoVecList(1);
      iov.push(addressOf(b), b.length);
      expect(o.readSplit(wfd, iov, 0)).toBe(-9); // EBADF: opened write-only
      expect(o.pending).toBe(0);
    } finally {
      closeSync(wfd);
    }
  });
});
