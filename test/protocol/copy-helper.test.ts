import { describe, it, expect, afterEach } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync, readFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CopyHelper } from '../../protocol/sys/copy-helper.js';
import { OP_READ, OP_READ_CACHED, OP_WRITE } from '../../protocol/sys/copy-helper-layout.js';
import { IoVecList, closeQuiet, eventfd, eventfdRead } from '../../protocol/sys/fd.js';
import { addressOf } from '../../protocol/sys/libc.js';

const EBADF = 9;
const EAGAIN = 11;

async function until(cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Reaps until `n` results came, waiting for each. */
function results(h: CopyHelper, n: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  while (out.length < n) {
    h.waitResult();
    h.reap((tag, res) => out.push([tag, res]));
  }
  return out;
}

describe('CopyHelper', () => {
  let dir = '';
  let fd = -1;
  let efd = -1;
  let helper: CopyHelper | null = null;
  afterEach(() => {
    helper?.close();
    helper = null;
    closeQuiet(efd);
    if (fd >= 0) closeSync(fd);
    fd = -1;
    rmSync(dir, { recursive: true, force: true });
  });

  const setup = async (entries = 8, base = tmpdir()): Promise<{ h: CopyHelper; file: string; initial: Buffer }> => {
    dir = mkdtempSync(join(base, 'kumo-copy-'));
    const file = join(dir, 'f');
    const initial = randomBytes(64 * 1024);
    writeFileSync(file, initial);
    fd = openSync(file, 'r+');
    efd = eventfd();
    helper = new CopyHelper(entries, efd, 200);
    await until(() => (helper as CopyHelper).ready);
    return { h: helper, file, initial };
  };

  it('reads and writes on its own thread, results in order, and wakes the owner after a burst', async () => {
    const { h, file, initial } = await setup();
    const bufs = Array.from({ length: 8 }, () => Buffer.alloc(4096));
    const iovs = bufs.map((b) => {
      const l = new IoVecList(2);
      l.push(addressOf(b), 2048);
      l.push(addressOf(b) + 2048n, 2048);
      return l;
    });
    iovs.forEach((l, k) => h.submit(fd, Number(l.ptr), 2, 4096 * k, OP_READ, 100 + k));
    expect(results(h, 8)).toEqual(bufs.map((_, k) => [100 + k, 4096]));
    bufs.forEach((b, k) => expect(b.equals(initial.subarray(4096 * k, 4096 * (k + 1)))).toBe(true));
    expect(h.backlog).toBe(0);
    await until(() => eventfdRead(efd) > 0, 2000);

    const data = randomBytes(4096);
    const w = new IoVecList(1);
    w.push(addressOf(data), 4096);
    h.submit(fd, Number(w.ptr), 1, 8192, OP_WRITE, 7);
    h.submit(-1, Number(w.ptr), 1, 0, OP_WRITE, 8); // a copy that fails gets its -errno, the rest goes on
    expect(results(h, 2)).toEqual([[7, 4096], [8, -EBADF]]);
    const now = readFileSync(file);
    expect(now.subarray(8192, 12288).equals(data)).toBe(true);
    expect(now.subarray(0, 8192).equals(initial.subarray(0, 8192))).toBe(true);
  });

  it('a cached-only read gets EAGAIN (or less) for data out of the page cache, and the whole of it once it is in', async () => {
    // A disk file system (/tmp may be tmpfs, whose pages are the data).
    const { h, file, initial } = await setup(8, existsSync('/var/tmp') ? '/var/tmp' : tmpdir());
    // Written back, then dropped from the page cache (POSIX_FADV_DONTNEED through dd).
    for (const args of [['sync', file], ['dd', `if=${file}`, 'iflag=nocache', 'count=0', 'status=none']]) {
      expect(spawnSync(args[0], args.slice(1)).status).toBe(0);
    }
    const b = Buffer.alloc(4096);
    const l = new IoVecList(1);
    l.push(addressOf(b), 4096);
    h.submit(fd, Number(l.ptr), 1, 32768, OP_READ_CACHED, 1);
    const [[tag, cold]] = results(h, 1);
    expect(tag).toBe(1);
    expect(cold === -EAGAIN || (cold >= 0 && cold < 4096), `a read of dropped data gave ${cold}`).toBe(true);
    h.submit(fd, Number(l.ptr), 1, 32768, OP_READ, 2); // waits for the device and leaves the page cached
    h.submit(fd, Number(l.ptr), 1, 32768, OP_READ_CACHED, 3);
    expect(results(h, 2)).toEqual([[2, 4096], [3, 4096]]);
    expect(b.equals(initial.subarray(32768, 36864))).toBe(true);
  });

  it('closed before its thread came up (never used), close waits for it to end', () => {
    efd = eventfd();
    helper = new CopyHelper(4, efd, 100);
    expect(helper.ready).toBe(false);
    expect(helper.close()).toBe(true);
    expect(helper.exited).toBe(true);
    helper = null;
  });

  it('wakes from sleep for a copy, refuses more than its ring holds, and stops', async () => {
    const { h } = await setup(4);
    await new Promise((r) => setTimeout(r, 20)); // well past its 200 µs of polling: asleep
    const b = Buffer.alloc(512);
    const l = new IoVecList(1);
    l.push(addressOf(b), 512);
    for (let k = 0; k < 4; k++) h.submit(fd, Number(l.ptr), 1, 0, OP_READ, k);
    expect(() => h.submit(fd, Number(l.ptr), 1, 0, OP_READ, 9)).toThrow(/full/);
    expect(results(h, 4).map(([t]) => t)).toEqual([0, 1, 2, 3]);
    expect(h.close()).toBe(true);
    expect(h.ready).toBe(false);
    eventfdRead(efd);
    await new Promise((r) => setTimeout(r, 20));
    expect(eventfdRead(efd)).toBe(0); // nothing writes the owner's eventfd once close() returned
    helper = null;
  });
});
