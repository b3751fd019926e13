// Boots the L2 test image under plain QEMU TCG on the host (no lab, no KVM needed): the PVH vmlinux,
// the initramfs /init, its module set against real virtio-pci devices, and the result markers.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureImage, type ImagePaths } from '../../vmm/image/index.js';

const QEMU = 'qemu-system-x86_64';
const skip = spawnSync(QEMU, ['--version']).status === 0 ? null : `${QEMU} missing (apt-get install qemu-system-x86)`;
if (skip) console.warn(`test/lab/guest-image.test.ts skipped: ${skip}`);

function boot(img: ImagePaths, append: string, extra: string[] = []): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const q = spawn(QEMU, [
      '-accel', 'tcg', '-M', 'q35', '-cpu', 'max', '-m', '256', '-smp', '1', '-nodefaults', '-no-user-config',
      '-display', 'none', '-serial', 'stdio', '-no-reboot', ...extra,
      '-kernel', img.vmlinux, '-initrd', img.initramfs, '-append', `console=ttyS0 quiet panic=-1 ${append}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    q.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    q.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const t = setTimeout(() => q.kill('SIGKILL'), 150_000);
    q.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out: out.replace(/\r/g, '') });
    });
  });
}

describe.skipIf(skip !== null)('L2 guest image under QEMU TCG', () => {
  let img: ImagePaths;
  let dir: string;
  beforeAll(async () => {
    img = await ensureImage();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-guest-'));
  }, 600_000);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('devices script: virtio-pci rng/console/blk/net bound to their drivers, hwrng read, hvc0 written', async () => {
    const disk = path.join(dir, 'disk.img');
    fs.writeFileSync(disk, Buffer.alloc(4 << 20));
    const hvc = path.join(dir, 'hvc.out');
    const r = await boot(img, 'kumo.script=devices', [
      '-device', 'virtio-rng-pci', '-device', 'virtio-serial-pci', '-chardev', `file,id=h,path=${hvc}`,
      '-device', 'virtconsole,chardev=h', '-drive', `if=none,id=d0,file=${disk},format=raw`, '-device', 'virtio-blk-pci,drive=d0',
      '-netdev', 'hubport,id=n0,hubid=0', '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc',
    ]);
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/KUMO-READY uptime=[\d.]+/);
    for (const id of ['1005', '1003', '1001', '1000']) expect(r.out).toMatch(new RegExp(`KUMO-PCI \\S+ 0x1af4:0x${id} class=\\S+ driver=virtio-pci`));
    for (const drv of ['virtio_rng', 'virtio_console', 'virtio_blk', 'virtio_net']) expect(r.out).toMatch(new RegExp(`KUMO-VIRTIO virtio\\d+ device=\\S+ driver=${drv}`));
    expect(r.out).toMatch(/KUMO-HWRNG [0-9a-f]{32} source=virtio_rng/);
    expect(r.out).toContain('KUMO-HVC ok');
    expect(r.out).toContain('KUMO-BLK vda sectors=8192');
    expect(r.out).toContain('KUMO-NET eth0 mac=52:54:00:aa:bb:cc');
    expect(r.out).toContain('KUMO-RESULT rc=0');
    expect(r.out).not.toContain('KUMO-WARN');
    const hv = fs.readFileSync(hvc, 'utf8');
    expect(hv).toContain('KUMO-HVC-ECHO hello-from-guest');
    expect(hv).toContain('KUMO-RESULT rc=0');
  }, 200_000);

  it('kumo.cmd= runs a command line and reports its exit status', async () => {
    const r = await boot(img, 'kumo.cmd=echo "sum $((2+3))"; exit 5');
    expect(r.out).toContain('sum 5');
    expect(r.out).toContain('KUMO-RESULT rc=5');
    expect(r.code).toBe(0);
  }, 200_000);
});
