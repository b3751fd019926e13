import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { DiskConfig } from '../../vmm/config/disk.js';
import { attachVhostUserDevices, VhostUserDeviceError } from '../../vmm/vhost-user/index.js';
import { startProcess, stopProcess } from './harness.js';

const KUMO_BLK = new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url).pathname;
const noCall = () => -1;

describe('attaching vhost-user backends: failures are clear errors', () => {
  let dir = '';
  let child: ChildProcess | null = null;
  afterEach(async () => {
    await stopProcess(child);
    child = null;
    rmSync(dir, { recursive: true, force: true });
  });

  it('a missing backend socket fails after the retry window', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    const d = DiskConfig.parse(`vhost_user=on,socket=${join(dir, 'none.sock')},id=d0`);
    const p = attachVhostUserDevices({ disks: [d], net: [], fs: [] }, noCall, { retryForMs: 300, retryEveryMs: 50 });
    await expect(p).rejects.toThrow(VhostUserDeviceError);
    await expect(p).rejects.toThrow(/d0: cannot connect/);
  });

  it('more queues than the backend serves is refused; the backend then serves a fitting front-end', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(1 << 20));
    child = await startProcess(process.execPath, [KUMO_BLK, '--block-backend', `path=${img},socket=${sock},num_queues=1`], sock);
    const d = DiskConfig.parse(`vhost_user=on,socket=${sock},num_queues=4,id=d0`);
    await expect(attachVhostUserDevices({ disks: [d], net: [], fs: [] }, noCall, { retryForMs: 2000 })).rejects.toThrow(
      /backend serves 1 queues, 4 requested/,
    );
    // The backend stays up for the next front-end: a 1-queue disk attaches.
    const ok = await attachVhostUserDevices({ disks: [DiskConfig.parse(`vhost_user=on,socket=${sock},id=d1`)], net: [], fs: [] }, noCall, {
      retryForMs: 2000,
    });
    expect(ok.specs[0].queueSizes).toEqual([128]);
    ok.close();
  }, 60_000);
});
