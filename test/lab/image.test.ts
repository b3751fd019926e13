import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildCpioGz } from '../../vmm/image/cpio.js';
import { ensureImage, ImageError, moduleName, parseModulesDep, pvhEntry, resolveLoadOrder, type ImagePaths } from '../../vmm/image/index.js';
import { withLockFile } from '../../vmm/image/lock.js';
import { elfNotes, kernelPayload } from '../../vmm/image/vmlinux.js';

function cpioList(gz: string): string[] {
  const r = spawnSync('sh', ['-c', `zcat '${gz}' | cpio -it --quiet`], { encoding: 'utf8' });
  expect(r.status).toBe(0);
  return r.stdout.split('\n').filter(Boolean);
}

function cpioFile(gz: string, member: string): string {
  const r = spawnSync('sh', ['-c', `zcat '${gz}' | cpio -i --quiet --to-stdout '${member}'`], { encoding: 'utf8' });
  expect(r.status).toBe(0);
  return r.stdout;
}

/** Every module's modules.dep dependencies come earlier in the list. */
function expectDepsFirst(order: string[], depText: string): void {
  const deps = parseModulesDep(depText);
  const byName = new Map([...deps.keys()].map((k) => [moduleName(k), k]));
  const seen = new Set<string>();
  for (const file of order) {
    const mod = byName.get(moduleName(file));
    expect(mod, `${file} is in modules.dep`).toBeDefined();
    for (const dep of deps.get(mod!) ?? []) expect(seen.has(moduleName(dep)), `${dep} loaded before ${file}`).toBe(true);
    seen.add(moduleName(file));
  }
}

describe('module load order', () => {
  const dep = parseModulesDep([
    'kernel/a/virtio_net.ko: kernel/b/net_failover.ko kernel/c/failover.ko kernel/d/virtio.ko kernel/d/virtio_ring.ko',
    'kernel/b/net_failover.ko: kernel/c/failover.ko',
    'kernel/c/failover.ko:',
    'kernel/d/virtio.ko: kernel/d/virtio_ring.ko',
    'kernel/d/virtio_ring.ko:',
    'kernel/e/virtio-rng.ko.xz: kernel/d/virtio.ko kernel/d/virtio_ring.ko',
  ].join('\n'));

  it('puts every dependency before its user, once', () => {
    const order = resolveLoadOrder(dep, ['virtio_net', 'virtio_rng', 'rng_core'], new Set(['rng_core']));
    expect(order.map(moduleName)).toEqual(['failover', 'net_failover', 'virtio_ring', 'virtio', 'virtio_net', 'virtio_rng']);
  });

  it('rejects unknown modules, missing dependencies and cycles', () => {
    expect(() => resolveLoadOrder(dep, ['nope'])).toThrow(ImageError);
    expect(() => resolveLoadOrder(parseModulesDep('x.ko: y.ko\n'), ['x'])).toThrow(/missing/);
    expect(() => resolveLoadOrder(parseModulesDep('x.ko: y.ko\ny.ko: x.ko\n'), ['x'])).toThrow(/cycle/);
    expect(() => parseModulesDep('garbage line\n')).toThrow(ImageError);
  });
});

describe('kernel format checks reject garbage', () => {
  it('refuses a non-bzImage and a truncated ELF', () => {
    expect(() => kernelPayload(Buffer.alloc(4096))).toThrow(/bzImage/);
    const elf = Buffer.alloc(64);
    elf.writeUInt32BE(0x7f454c46, 0);
    elf[4] = 2;
    elf[5] = 1;
    elf.writeBigUInt64LE(0x1000n, 0x20); // program headers beyond the end
    elf.writeUInt16LE(56, 0x36);
    elf.writeUInt16LE(3, 0x38);
    expect(() => elfNotes(elf)).toThrow(ImageError);
    expect(() => elfNotes(Buffer.from('not an elf at all, really not'))).toThrow(/not an ELF/);
  });
});

describe('cpio writer', () => {
  it('writes an archive GNU cpio unpacks', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-cpio-'));
    try {
      const gz = path.join(dir, 'a.cpio.gz');
      fs.writeFileSync(gz, buildCpioGz([
        { kind: 'dir', path: 'etc' },
        { kind: 'file', path: 'etc/hello', data: 'hello\n', mode: 0o640 },
        { kind: 'file', path: 'odd', data: Buffer.from([1, 2, 3]) },
        { kind: 'symlink', path: 'etc/link', target: 'hello' },
      ]));
      const out = path.join(dir, 'x');
      fs.mkdirSync(out);
      const r = spawnSync('sh', ['-c', `zcat ../a.cpio.gz | cpio -idm --quiet`], { cwd: out });
      expect(r.status).toBe(0);
      expect(fs.readFileSync(path.join(out, 'etc/hello'), 'utf8')).toBe('hello\n');
      expect(fs.statSync(path.join(out, 'etc/hello')).mode & 0o777).toBe(0o640);
      expect([...fs.readFileSync(path.join(out, 'odd'))]).toEqual([1, 2, 3]);
      expect(fs.readlinkSync(path.join(out, 'etc/link'))).toBe('hello');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('lock file', () => {
  it('serialises holders and takes over a lock left by a dead process', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-lock-'));
    const file = path.join(dir, '.lock');
    try {
      let inside = 0;
      let maxInside = 0;
      const job = (): Promise<void> => withLockFile(file, 10_000, async () => {
        maxInside = Math.max(maxInside, ++inside);
        await new Promise((r) => setTimeout(r, 50));
        inside--;
      });
      await Promise.all([job(), job(), job()]);
      expect(maxInside).toBe(1);
      expect(fs.existsSync(file)).toBe(false);
      fs.writeFileSync(file, '999999999'); // no such pid
      expect(await withLockFile(file, 2000, async () => 'took over')).toBe('took over');
      // A live holder: the waiter says whom it waits for at once, and its timeout names what it waited for.
      fs.writeFileSync(file, String(process.ppid));
      const said: string[] = [];
      const write = process.stderr.write.bind(process.stderr);
      process.stderr.write = ((s: string) => (said.push(String(s)), true)) as typeof process.stderr.write;
      try {
        await expect(withLockFile(file, 500, async () => 'never', 'the lab')).rejects.toThrow('timed out waiting for the lab');
      } finally {
        process.stderr.write = write;
      }
      expect(said.join('')).toContain(`waiting for the lab: process ${process.ppid} holds ${file}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ensureImage (downloads linux-image-cloud-amd64 + busybox-static on first use)', () => {
  let img: ImagePaths;
  beforeAll(async () => {
    img = await ensureImage();
  }, 600_000);

  it('is idempotent and concurrent-safe', async () => {
    const [a, b] = await Promise.all([ensureImage(), ensureImage()]);
    expect(a).toEqual(img);
    expect(b).toEqual(img);
  });

  it('extracts a vmlinux with a Xen PVH entry note and keeps the bzImage', () => {
    const elf = fs.readFileSync(img.vmlinux);
    const entry = pvhEntry(elf);
    expect(entry).not.toBeNull();
    expect(entry!).toBeGreaterThan(0);
    expect(entry!).toBeLessThan(2 ** 32);
    expect(fs.readFileSync(img.bzImage).readUInt32LE(0x202)).toBe(0x53726448);
  });

  it('builds an L2 initramfs with /init, busybox, the scripts and virtio modules in dependency order', () => {
    const files = cpioList(img.initramfs);
    for (const f of ['init', 'bin/busybox', 'dev/console', 'etc/kumo/say.sh', 'etc/kumo/scripts/ready.sh', 'etc/kumo/scripts/devices.sh']) {
      expect(files).toContain(f);
    }
    expect(img.scripts).toEqual(expect.arrayContaining(['ready', 'devices']));
    const order = cpioFile(img.initramfs, 'etc/kumo/modules').split('\n').filter(Boolean);
    for (const m of order) expect(files).toContain(`lib/modules/${m}`);
    for (const want of ['virtio_pci', 'virtio_blk', 'virtio_net', 'net_failover', 'virtiofs', 'fuse', 'virtio_console', 'virtio_rng', 'vmw_vsock_virtio_transport']) {
      expect(order.map(moduleName)).toContain(want);
    }
    expectDepsFirst(order, fs.readFileSync(path.join(img.modulesDir, 'modules.dep'), 'utf8'));
  });

  it('builds an L1 lab initramfs with kvm_amd after kvm after irqbypass, and virtiofs', () => {
    const order = cpioFile(img.labInitramfs, 'etc/kumo/modules').split('\n').filter(Boolean).map(moduleName);
    expect(order.indexOf('irqbypass')).toBeLessThan(order.indexOf('kvm'));
    expect(order.indexOf('kvm')).toBeLessThan(order.indexOf('kvm_amd'));
    expect(order).toEqual(expect.arrayContaining(['virtiofs', 'tun', 'vhost_net']));
    expectDepsFirst(cpioFile(img.labInitramfs, 'etc/kumo/modules').split('\n').filter(Boolean),
      fs.readFileSync(path.join(img.modulesDir, 'modules.dep'), 'utf8'));
  });
});
