import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { DiskConfig } from '../../vmm/config/disk.js';
import { NetConfig } from '../../vmm/config/net.js';
import { unixConnect } from '../../protocol/sys/socket.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { attachVhostUserDevices, VhostUserDeviceError } from '../../vmm/vhost-user/index.js';
import { startProcess, stopProcess } from './harness.js';

const KUMO_BLK = new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url).pathname;
const FAKE = new URL('./fixtures/fake-backend.ts', import.meta.url).pathname;
const TSX = new URL('../../node_modules/.bin/tsx', import.meta.url).pathname;
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

  const fake = async (sock: string, mode: string): Promise<ChildProcess> => {
    const c = spawn(TSX, [FAKE, sock, mode], { stdio: 'ignore' });
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
    return c;
  };

  it('a back-end without VIRTIO_F_VERSION_1 is refused, naming the device and its socket', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    const sock = join(dir, 'be.sock');
    child = await fake(sock, 'nov1');
    const d = DiskConfig.parse(`vhost_user=on,socket=${sock},id=d0`);
    await expect(attachVhostUserDevices({ disks: [d], net: [], fs: [] }, noCall, { retryForMs: 2000 })).rejects.toThrow(
      `vhost-user disk d0 (socket ${sock}): the back-end does not offer VIRTIO_F_VERSION_1`,
    );
  }, 30_000);

  it('a back-end without protocol MQ serves one blk queue, as Cloud Hypervisor assumes: four are refused', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    const sock = join(dir, 'be.sock');
    child = await fake(sock, 'nomq');
    const d = DiskConfig.parse(`vhost_user=on,socket=${sock},num_queues=4,id=d0`);
    await expect(attachVhostUserDevices({ disks: [d], net: [], fs: [] }, noCall, { retryForMs: 2000 })).rejects.toThrow(/backend serves 1 queues, 4 requested/);
  }, 30_000);

  it('a back-end that stops answering is named with the request it did not answer', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    const sock = join(dir, 'be.sock');
    child = await fake(sock, 'hang@GET_PROTOCOL_FEATURES');
    const d = DiskConfig.parse(`vhost_user=on,socket=${sock},id=d0`);
    const err: unknown = await attachVhostUserDevices({ disks: [d], net: [], fs: [] }, noCall, { retryForMs: 2000, replyTimeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VhostUserDeviceError);
    expect((err as VhostUserDeviceError).message).toMatch(new RegExp(`^vhost-user disk d0 \\(socket ${sock}\\): .*timed out`));
    expect((err as VhostUserDeviceError).context.request).toBe('GET_PROTOCOL_FEATURES');
  }, 30_000);

  it('a socket that can never be connected to fails at once, not after the retry window', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    writeFileSync(join(dir, 'file'), '');
    const d = DiskConfig.parse(`vhost_user=on,socket=${join(dir, 'file', 'be.sock')},id=d0`); // ENOTDIR
    const t0 = Date.now();
    await expect(attachVhostUserDevices({ disks: [d], net: [], fs: [] }, noCall, { retryForMs: 60_000 })).rejects.toThrow(/d0: cannot connect/);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(() => DiskConfig.parse(`vhost_user=on,socket=/tmp/${'x'.repeat(110)}.sock`)).toThrow(/socket path is 120 bytes; a Unix socket path must be at most 107/);
  });

  it('vhost_mode=server removes its listening socket once the back-end connected', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-attach-'));
    const sock = join(dir, 'net.sock');
    const n = NetConfig.parse(`vhost_user=on,socket=${sock},vhost_mode=server,id=n0`);
    const p = attachVhostUserDevices({ disks: [], net: [n], fs: [] }, noCall, { retryForMs: 5000, replyTimeoutMs: 300 });
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 10));
    const fd = unixConnect(sock); // a back-end that connects and then says nothing
    await expect(p).rejects.toThrow(/n0/);
    closeQuiet(fd);
    expect(existsSync(sock)).toBe(false);
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
    expect(ok.specs[0].features & (1n << 5n)).toBe(0n);
    ok.close();
    // readonly=on on the VMM side: the guest is offered VIRTIO_BLK_F_RO, whatever the back-end says.
    const ro = await attachVhostUserDevices({ disks: [DiskConfig.parse(`vhost_user=on,socket=${sock},id=d2,readonly=on`)], net: [], fs: [] }, noCall, {
      retryForMs: 2000,
    });
    expect(ro.specs[0].features & (1n << 5n)).toBe(1n << 5n);
    ro.close();
  }, 60_000);
});
