// A device that holds a write up for longer than a command used to wait for a queue worker (10 s): the image's
// file system frozen, as for a backup snapshot. QEMU waits for GET_VRING_BASE without limit; so must the back-end.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { eventfdWrite } from '../../protocol/sys/fd.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const FREEZE_S = 12;
const sh = (cmd: string): void => void spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });

function whyNot(): string | null {
  if (process.getuid?.() !== 0) return 'not root (loop device, mount, fsfreeze)';
  for (const tool of ['losetup', 'mkfs.ext4', 'fsfreeze']) if (spawnSync(tool, ['-V']).error) return `${tool} missing`;
  if (!existsSync('/dev/loop-control')) return 'no loop devices';
  return null;
}
const why = whyNot();
if (why !== null) console.log(`test/blk/stall.test.ts skipped: ${why}`);

describe.skipIf(why !== null)('vhost-user-blk with a stalled device', () => {
  it(`GET_VRING_BASE waits for a write the device holds up for ${FREEZE_S} s and returns it completed; the next front-end reads it`, async () => {
    const dir = mkdtempSync('/tmp/kumo-blk-stall-');
    const backing = join('/dev/shm', `kumo-blk-stall-${process.pid}.ext4`);
    const mnt = join(dir, 'mnt');
    let loop = '';
    let child: Awaited<ReturnType<typeof startBackend>> | null = null;
    try {
      sh(`truncate -s 128M ${backing} && mkfs.ext4 -q -F ${backing}`);
      loop = spawnSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).stdout.trim();
      mkdirSync(mnt);
      expect(spawnSync('mount', [loop, mnt]).status).toBe(0);
      sh(`truncate -s 16M ${mnt}/img`);
      const sock = join(dir, 'blk.sock');
      child = await startBackend(`path=${mnt}/img,socket=${sock}`);
      const c = await BlkVuClient.connect(sock);
      const buf = c.buf(4096);
      c.mem.fill(buf, 4096, 0xab);
      c.add(0, VIRTIO_BLK_T_OUT, 0, [{ addr: buf, len: 4096 }], [], 1);
      c.run(0, 1);
      sh(`fsfreeze -f ${mnt}`);
      // Thawed by another process: this one blocks in GET_VRING_BASE meanwhile.
      spawn('sh', ['-c', `sleep ${FREEZE_S}; fsfreeze -u ${mnt}`], { stdio: 'ignore', detached: true }).unref();
      const data = c.buf(4096);
      c.mem.fill(data, 4096, 0xcd);
      c.add(0, VIRTIO_BLK_T_OUT, 8, [{ addr: data, len: 4096 }], [], 2);
      c.queues[0].driver.publish();
      eventfdWrite(c.queues[0].kick);
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      // It answered nothing and closed the connection after 10 s: the front-end lost its disk.
      expect(c.fe.getVringBase(0)).toBe(2);
      expect(Date.now() - t0).toBeGreaterThan((FREEZE_S - 2) * 1000);
      expect(c.queues[0].driver.takeUsed().map((u) => u.token)).toEqual([2]);
      c.close();
      const d = await BlkVuClient.connect(sock);
      const back = d.buf(4096);
      d.add(0, VIRTIO_BLK_T_IN, 8, [], [{ addr: back, len: 4096 }], 1);
      d.run(0, 1);
      const got = new Uint8Array(4096);
      d.mem.read(back, got);
      expect(got.every((b) => b === 0xcd)).toBe(true);
      d.close();
    } finally {
      sh(`fsfreeze -u ${mnt} 2>/dev/null`);
      if (child !== null) await stopBackend(child);
      sh(`umount ${mnt} 2>/dev/null || umount -l ${mnt}`);
      if (loop) spawnSync('losetup', ['-d', loop]);
      rmSync(backing, { force: true });
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
