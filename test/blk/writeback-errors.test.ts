// A write-back that fails under the image (a loop device whose backing file's tmpfs is full): the kernel reports the
// error to one fdatasync of each open file description and marks the pages clean, so a later sync succeeds for data
// that never reached the disk. Nothing acked as durable may be missing from the backing file.
import { execSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const OK = 0;
const IOERR = 1;

function whyNot(): string | null {
  if (process.getuid?.() !== 0) return 'not root (loop device, tmpfs mount)';
  if (spawnSync('losetup', ['-V']).error || !existsSync('/dev/loop-control')) return 'no loop devices';
  return null;
}
const why = whyNot();
if (why !== null) console.log(`test/blk/writeback-errors.test.ts skipped: ${why}`);

/** A loop device over a 64 MiB sparse file on an 8 MiB tmpfs with `freeMiB` left: write-back past that fails. */
async function withFullLoop(freeMiB: number, f: (loop: string, backing: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync('/tmp/kumo-blk-wberr-');
  const mnt = join(dir, 'tmpfs');
  mkdirSync(mnt);
  execSync(`mount -t tmpfs -o size=8M kumo-blk-wberr ${mnt}`);
  let loop = '';
  try {
    execSync(`truncate -s 64M ${mnt}/back.img && dd if=/dev/zero of=${mnt}/fill bs=1M count=${8 - freeMiB} 2>/dev/null || true`);
    loop = execSync(`losetup -f --show ${mnt}/back.img`, { encoding: 'utf8' }).trim();
    await f(loop, `${mnt}/back.img`);
  } finally {
    if (loop) spawnSync('losetup', ['-d', loop]);
    spawnSync('umount', [mnt]);
    rmSync(dir, { recursive: true, force: true });
  }
}

function present(backing: string, sectors: number[], len: number, fill: number): number {
  const fd = openSync(backing, 'r');
  const b = Buffer.alloc(len);
  let n = 0;
  for (const s of sectors) {
    readSync(fd, b, 0, len, s * 512);
    if (b.every((x) => x === fill)) n++;
  }
  closeSync(fd);
  return n;
}

describe.skipIf(why !== null)('vhost-user-blk when writing the image back fails', () => {
  it('every FLUSH after a failed one fails, on every queue (the second FLUSH said OK for writes the disk never got)', async () => {
    await withFullLoop(1, async (loop, backing) => {
      const sock = join('/tmp', `kumo-blk-wberr-${process.pid}.sock`);
      const child = await startBackend(`path=${loop},socket=${sock},num_queues=2`);
      try {
        const c = await BlkVuClient.connect(sock, { numQueues: 2 });
        const sectors = Array.from({ length: 16 }, (_, i) => 32768 + i * 256);
        const st = sectors.map((s, i) => {
          const b = c.buf(128 * 1024, 4096);
          c.mem.fill(b, 128 * 1024, 0xa5);
          return c.add(1, VIRTIO_BLK_T_OUT, s, [{ addr: b, len: 128 * 1024 }], [], i + 1);
        });
        c.run(1, 16, 20_000);
        expect(st.map((a) => c.mem.readU8(a))).toEqual(new Array(16).fill(OK)); // in the page cache: fine so far
        const flush = (q: number): number => {
          const a = c.add(q, VIRTIO_BLK_T_FLUSH, 0, [], [], 100 + q);
          c.run(q, 1, 20_000);
          return c.mem.readU8(a);
        };
        expect(flush(0)).toBe(IOERR);
        // The queue whose writes were lost, and the same queue again: the error was already reported.
        expect([flush(1), flush(1), flush(0)]).toEqual([IOERR, IOERR, IOERR]);
        c.close();
        expect(present(backing, sectors, 128 * 1024, 0xa5)).toBeLessThan(16);
      } finally {
        await stopBackend(child);
        rmSync(sock, { force: true });
      }
    });
  }, 60_000);

  it('writethrough: no write is acked OK unless it is on the disk (a failed group sync left those written meanwhile acked)', async () => {
    await withFullLoop(2, async (loop, backing) => {
      const sock = join('/tmp', `kumo-blk-wberr-wt-${process.pid}.sock`);
      const child = await startBackend(`path=${loop},socket=${sock},num_queues=1`);
      try {
        const c = await BlkVuClient.connect(sock, { writethrough: true, queueSize: 256, memSize: 256 << 20 });
        const acked: number[] = [];
        let sector = 2048;
        let failed = 0;
        for (let round = 0; round < 8; round++) {
          const reqs: [number, number][] = [];
          for (let i = 0; i < 32; i++) {
            const b = c.buf(64 * 1024, 4096);
            c.mem.fill(b, 64 * 1024, 0x5a);
            reqs.push([c.add(0, VIRTIO_BLK_T_OUT, sector, [{ addr: b, len: 64 * 1024 }], [], round * 100 + i + 1), sector]);
            sector += 128;
          }
          c.run(0, reqs.length, 30_000);
          for (const [a, s] of reqs) {
            if (c.mem.readU8(a) === OK) acked.push(s);
            else failed++;
          }
        }
        c.close();
        expect(failed).toBeGreaterThan(0); // the tmpfs did fill up
        expect(acked.length - present(backing, acked, 64 * 1024, 0x5a)).toBe(0);
      } finally {
        await stopBackend(child);
        rmSync(sock, { force: true });
      }
    });
  }, 90_000);
});
