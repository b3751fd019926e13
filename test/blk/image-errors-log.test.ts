// Writes that fail under the image (ENOSPC: a sparse image on a full tmpfs) fail each request with IOERR. The
// back-end said nothing at the default level (a debug line per request), so the operator saw only the guest's
// errors; it now warns, rate-limited, with the errno: one line for a burst of failing requests, not one each.
import { execSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const why = process.getuid?.() !== 0 ? 'not root (tmpfs mount)' : null;

it.skipIf(why !== null)('a full file system under the image is said once (rate-limited), with the errno', async () => {
  const dir = mkdtempSync('/tmp/kumo-blk-enospc-');
  const mnt = join(dir, 'tmpfs');
  mkdirSync(mnt);
  execSync(`mount -t tmpfs -o size=2M kumo-blk-enospc ${mnt}`);
  try {
    const img = join(mnt, 'd.img');
    writeFileSync(img, '');
    truncateSync(img, 16 << 20);
    const sock = join(dir, 's');
    const be = await startBackend(`path=${img},socket=${sock}`, { KUMO_LOG: 'info' });
    let log = '';
    be.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    try {
      const cl = await BlkVuClient.connect(sock);
      const buf = cl.buf(65536);
      let ioerr = 0;
      for (let i = 0; i < 128; i++) {
        const st = cl.add(0, VIRTIO_BLK_T_OUT, i * 128, [{ addr: buf, len: 65536 }], [], i);
        cl.run(0, 1);
        if (cl.mem.readU8(st) === 1) ioerr++;
      }
      cl.close();
      expect(ioerr).toBeGreaterThan(50); // 8 MiB written to a 2 MiB file system
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      await stopBackend(be, 'SIGKILL');
    }
    const lines = log.match(/I\/O on the image failed/g)?.length ?? 0;
    expect(lines).toBeGreaterThanOrEqual(1);
    expect(lines).toBeLessThanOrEqual(2);
    expect(log).toMatch(/"err":"ENOSPC".*I\/O on the image failed/);
  } finally {
    for (let i = 0; i < 20 && spawnSync('umount', [mnt]).status !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);
