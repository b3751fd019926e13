// A host file system may answer a read short before the end of the file (a FUSE or network file system opened with
// direct I/O). A short READ reply tells a Linux guest its file ends there (fuse_short_read shrinks i_size under the
// page cache): the daemon reads on until the request is full or at the end, as QEMU's virtiofsd does.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUSE_ROOT_ID, Init } from '../../protocol/fuse/index.js';
import { connectFs, QEMU_VIRTIOFSD } from './daemons.js';
import { mountTinyFuse, tinyFuseUnavailable } from './tiny-fuse.js';

const SIZE = 2 << 20;
const KiB = 1024;

const why = tinyFuseUnavailable();
if (why !== null) console.log(`test/fs/short-reads.test.ts skipped: ${why}`);

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** The server's file from `off`, up to `len` bytes and the end of the file. */
function expected(off: number, len: number): Buffer {
  const n = Math.max(0, Math.min(len, SIZE - off));
  const b = Buffer.alloc(n);
  for (let k = 0; k < n; k++) {
    const i = off + k;
    b[k] = ((i % 4096) + Math.floor(i / 4096)) & 0xff;
  }
  return b;
}

const SEQUENTIAL: [number, number][] = [[0, 64 * KiB], [8 * KiB, 16 * KiB], [SIZE - 4 * KiB, 8 * KiB], [0, 1024 * KiB], [512 * KiB + 1, 1024 * KiB], [SIZE - 100, 1024 * KiB]];

for (const who of ['kumo', 'qemu'] as const) {
  describe.skipIf(why !== null || (who === 'qemu' && !existsSync(QEMU_VIRTIOFSD)))(`${who}: READ of a file whose host file system answers 4 KiB at a time`, () => {
    it('is answered whole up to the end of the file: lone, large (split) and concurrent (offloaded) READs', async () => {
      const dir = mkdtempSync('/tmp/kumo-short-reads-');
      const share = join(dir, 'share');
      const mnt = join(share, 'fm');
      mkdirSync(mnt, { recursive: true });
      const r = { stdout: mountTinyFuse(mnt, 'short-reads') };
      cleanups.push(() => {
        spawnSync('umount', ['-l', mnt]);
        rmSync(dir, { recursive: true, force: true });
      });
      expect(r.stdout).toContain('mounted');
      // The daemon's socket directory apart: its cleanup removes that directory, and runs first.
      const c = await connectFs({ who, kumoArgs: ['--no-announce-submounts'] }, mkdtempSync('/tmp/kumo-short-reads-sock-'), share, cleanups, 4);
      await c.init(Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT);
      const fm = (await c.lookup(FUSE_ROOT_ID, 'fm')).nodeid;
      const e = await c.lookup(fm, 'big');
      expect(Number(e.attr.size)).toBe(SIZE);
      const { fh } = await c.open(e.nodeid, 0);
      for (const [off, len] of SEQUENTIAL) {
        const got = Buffer.from(await c.read(e.nodeid, fh, off, len));
        const want = expected(off, len);
        let d = 0;
        while (d < want.length && got[d] === want[d]) d++;
        expect({ off, len, n: got.length, firstDiff: d }).toEqual({ off, len, n: want.length, firstDiff: want.length });
      }
      const offs = [0, 256 * KiB, 768 * KiB, 1536 * KiB];
      const all = await Promise.all(offs.map((off) => c.read(e.nodeid, fh, off, 256 * KiB)));
      all.forEach((b, k) => expect(Buffer.from(b).equals(expected(offs[k], 256 * KiB))).toBe(true));
    }, 60_000);
  });
}
