// kumo-vhost-user-blk serving a block device (a loop device) rather than a file.
import { execSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { VIRTIO_BLK_T_DISCARD } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

function whyNot(): string | null {
  if (process.getuid?.() !== 0) return 'not root (loop devices, mounts)';
  if (spawnSync('losetup', ['-V']).error || !existsSync('/dev/loop-control')) return 'no loop devices';
  if (spawnSync('mkfs.ext2', ['-V']).error) return 'no mkfs.ext2 (e2fsprogs)';
  return null;
}
const why = whyNot();
if (why !== null) console.log(`test/blk/block-device.test.ts skipped: ${why}`);

/**
 * A loop device that discards but cannot write zeroes, the shape of most SATA SSDs: its backing file lies on ext2
 * (punch hole, no zero range), so the loop driver turns write-zeroes off after the first refusal.
 */
async function withDiscardOnlyDevice(f: (dev: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync('/var/tmp/kumo-blk-dev-');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  let dev = '';
  try {
    execSync(`truncate -s 64M ${dir}/fs.img && mkfs.ext2 -q -F ${dir}/fs.img && mount -o loop ${dir}/fs.img ${mnt}`);
    writeFileSync(`${mnt}/disk.raw`, randomBytes(8 << 20));
    dev = execSync(`losetup -f --show ${mnt}/disk.raw`, { encoding: 'utf8' }).trim();
    // Make the driver find out that it cannot write zeroes (it asks the backing file system once).
    spawnSync('blkdiscard', ['-z', '-o', '0', '-l', '4096', dev]);
    const q = `/sys/block/${basename(dev)}/queue`;
    expect(Number(readFileSync(`${q}/discard_max_bytes`, 'utf8'))).toBeGreaterThan(0);
    expect(Number(readFileSync(`${q}/write_zeroes_max_bytes`, 'utf8'))).toBe(0);
    await f(dev);
  } finally {
    if (dev) spawnSync('losetup', ['-d', dev]);
    spawnSync('umount', [mnt]); // its own loop device goes with it
    rmSync(dir, { recursive: true, force: true });
  }
}

function allZero(dev: string, off: number, len: number): boolean {
  const fd = openSync(dev, 'r');
  const b = Buffer.alloc(len);
  readSync(fd, b, 0, len, off);
  closeSync(fd);
  return b.every((x) => x === 0);
}

describe.skipIf(why !== null)('vhost-user-blk on a block device', () => {
  it('passes DISCARD on as BLKDISCARD to a device that discards but cannot write zeroes (fallocate there is a write-zeroes)', async () => {
    await withDiscardOnlyDevice(async (dev) => {
      const sock = join('/tmp', `kumo-blk-dev-${process.pid}.sock`);
      const child = await startBackend(`path=${dev},socket=${sock}`);
      try {
        const c = await BlkVuClient.connect(sock);
        for (const [token, sector] of [[1, 4096], [2, 8192]]) {
          const st = c.add(0, VIRTIO_BLK_T_DISCARD, 0, [c.ranges([{ sector, numSectors: 64, flags: 0 }])], [], token);
          c.run(0, 1);
          expect(c.mem.readU8(st)).toBe(0);
        }
        c.close();
        // The loop driver punches the discarded range out of its backing file: it reads back as zeroes.
        expect([allZero(dev, 4096 * 512, 64 * 512), allZero(dev, 8192 * 512, 64 * 512)]).toEqual([true, true]);
        expect(allZero(dev, 2048 * 512, 4096)).toBe(false); // and nothing else
      } finally {
        await stopBackend(child);
        rmSync(sock, { force: true });
      }
    });
  }, 60_000);
});
