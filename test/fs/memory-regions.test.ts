// Guest RAM a front-end shares from a block device (QEMU memory-backend-file,mem-path=/dev/pmem0,share=on): sizing it
// took ioctl(BLKGETSIZE64) on the request thread, whose seccomp filter has no ioctl, and the daemon was killed.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/messages.js';
import { closeQuiet, openFile, O_RDWR } from '../../protocol/sys/fd.js';

const BIN = fileURLToPath(new URL('../../bin/kumo-virtiofsd.js', import.meta.url));

function whyNot(): string | null {
  if (process.getuid?.() !== 0) return 'not root (loop device)';
  if (!existsSync('/dev/loop-control') || spawnSync('losetup', ['-V']).error) return 'no loop devices';
  return null;
}
const why = whyNot();
if (why !== null) console.log(`test/fs/memory-regions.test.ts skipped: ${why}`);

describe.skipIf(why !== null)('virtiofsd guest memory from a block device', () => {
  it('maps a region backed by a block device under the default seccomp filter, and refuses one past its end', async () => {
    const dir = mkdtempSync('/tmp/kumo-fs-bdev-');
    const img = join(dir, 'ram.img');
    writeFileSync(img, Buffer.alloc(0));
    truncateSync(img, 4 << 20);
    const loop = spawnSync('losetup', ['-f', '--show', img], { encoding: 'utf8' }).stdout.trim();
    const share = join(dir, 'share');
    mkdirSync(share);
    const sock = join(dir, 'fs.sock');
    const child = spawn(process.execPath, [BIN, `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'], {
      stdio: 'ignore',
      env: { ...process.env, KUMO_LOG: 'error' },
    });
    const exited = new Promise<string>((r) => child.once('exit', (code, sig) => r(`${code ?? sig}`)));
    let fd = -1;
    try {
      fd = openFile(loop, O_RDWR);
      const fe = await VhostUserFrontend.connect(sock, { retryForMs: 10_000 });
      fe.negotiate(1n << 32n, protocolFeatures(ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIGURE_MEM_SLOTS));
      fe.addMemRegion({ guestAddr: 0, size: 1 << 20, userAddr: 0x7000_0000, mmapOffset: 0 }, fd);
      expect(fe.getQueueNum()).toBe(2); // still serving
      expect(() => fe.addMemRegion({ guestAddr: 1 << 30, size: 8 << 20, userAddr: 0x8000_0000, mmapOffset: 0 }, fd)).toThrow();
      fe.close();
      expect(await exited).toBe('0'); // the refusal ends the connection, and the daemon exits as after any disconnect
    } finally {
      if (fd >= 0) closeQuiet(fd);
      child.kill('SIGKILL');
      spawnSync('losetup', ['-d', loop]);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});
