import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DiskImage } from '../../backends/vhost-user-blk/image.js';
import { EXT4_SUPER_MAGIC } from '../../protocol/sys/fs.js';

describe('DiskImage', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-img-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('opens a raw file and reports its size in sectors', () => {
    const p = join(dir, 'a.raw');
    writeFileSync(p, Buffer.alloc(1 << 20));
    const img = DiskImage.open(p, { readonly: false, direct: false });
    expect(img.size).toBe(1 << 20);
    expect(img.sectors).toBe(2048);
    expect(img.isBlockDevice).toBe(false);
    img.close();
  });

  it.skipIf(!existsSync('/dev/shm'))('knows a tmpfs image is memory-backed (buffered only)', () => {
    const shm = mkdtempSync('/dev/shm/kumo-img-');
    try {
      const p = join(shm, 'm.raw');
      writeFileSync(p, Buffer.alloc(1 << 20));
      const img = DiskImage.open(p, { readonly: false, direct: false });
      expect(img.memoryBacked).toBe(true);
      expect(img.writesPunted).toBe(false);
      img.close();
      const onDisk = join(dir, 'd.raw');
      writeFileSync(onDisk, Buffer.alloc(1 << 20));
      const d = DiskImage.open(onDisk, { readonly: true, direct: false });
      expect(d.memoryBacked).toBe(statfsSync(dir).type === 0x01021994);
      d.close();
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  const tmpIsExt4 = statfsSync(tmpdir()).type === EXT4_SUPER_MAGIC;
  if (!tmpIsExt4) console.log(`${tmpdir()} is not ext4: the ext4 write check has no file system to run on`);
  it.skipIf(!tmpIsExt4)('knows buffered ext4 writes would all go to io-wq (not with O_DIRECT)', () => {
    const p = join(dir, 'e.raw');
    writeFileSync(p, Buffer.alloc(1 << 20));
    const img = DiskImage.open(p, { readonly: false, direct: false });
    expect(img.writesPunted).toBe(true);
    expect(img.memoryBacked).toBe(false);
    img.close();
    const direct = DiskImage.open(p, { readonly: false, direct: true });
    expect(direct.writesPunted).toBe(false);
    direct.close();
  });

  // Root, as CI runs; a loop device is the block device every Linux host can make.
  const canLoop = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0 && existsSync('/dev/loop-control');
  if (!canLoop) console.log('not root or no losetup/loop devices: the block-device image check is skipped');
  it.skipIf(!canLoop)('a block device is never memory-backed, though its node lives on devtmpfs (tmpfs)', () => {
    const p = join(dir, 'loop.raw');
    writeFileSync(p, Buffer.alloc(1 << 20));
    const r = spawnSync('losetup', ['-f', '--show', p], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const dev = r.stdout.trim();
    try {
      expect(statfsSync(dev).type).toBe(0x01021994);
      const img = DiskImage.open(dev, { readonly: true, direct: false });
      expect(img.isBlockDevice).toBe(true);
      expect(img.size).toBe(1 << 20);
      expect(img.memoryBacked).toBe(false);
      expect(img.writesPunted).toBe(false);
      img.close();
    } finally {
      spawnSync('losetup', ['-d', dev]);
    }
  });

  const haveQemuImg = spawnSync('qemu-img', ['--version']).status === 0;
  if (!haveQemuImg) console.log('qemu-img missing (apt-get install qemu-utils): the qcow2/vhdx refusal check is skipped');
  it.skipIf(!haveQemuImg)('refuses qcow2 and vhdx containers (served raw, a guest would overwrite them), with direct=on too', () => {
    for (const format of ['qcow2', 'vhdx']) {
      const p = join('/var/tmp', `kumo-${format}-${process.pid}.img`);
      const r = spawnSync('qemu-img', ['create', '-q', '-f', format, p, '16M'], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      try {
        for (const direct of [false, true]) {
          expect(() => DiskImage.open(p, { readonly: false, direct })).toThrow(`image ${p} is a ${format} image: only raw images are served`);
        }
      } finally {
        rmSync(p, { force: true });
      }
    }
  });

  it('refuses a size that is not a multiple of 512', () => {
    const p = join(dir, 'b.raw');
    writeFileSync(p, Buffer.alloc(1000));
    expect(() => DiskImage.open(p, { readonly: false, direct: false })).toThrow(/not a multiple of 512/);
  });

  it('refuses a missing file or a directory with a clear error', () => {
    expect(() => DiskImage.open(join(dir, 'nope'), { readonly: false, direct: false })).toThrow(/cannot open image .*ENOENT/);
    expect(() => DiskImage.open(dir, { readonly: true, direct: false })).toThrow(/neither a regular file nor a block device/);
  });

  it('locks the image: one writer, or many readers', () => {
    const p = join(dir, 'c.raw');
    writeFileSync(p, Buffer.alloc(4096));
    const w = DiskImage.open(p, { readonly: false, direct: false });
    expect(() => DiskImage.open(p, { readonly: false, direct: false })).toThrow(/locked by another process/);
    expect(() => DiskImage.open(p, { readonly: true, direct: false })).toThrow(/locked/);
    w.close();
    const r1 = DiskImage.open(p, { readonly: true, direct: false });
    const r2 = DiskImage.open(p, { readonly: true, direct: false });
    expect(() => DiskImage.open(p, { readonly: false, direct: false })).toThrow(/locked/);
    r1.close();
    r2.close();
    DiskImage.open(p, { readonly: false, direct: false }).close();
  });

  it('opens with O_DIRECT when asked (on a file system that supports it)', () => {
    const p = join('/var/tmp', `kumo-direct-${process.pid}.raw`);
    writeFileSync(p, Buffer.alloc(4096));
    try {
      const img = DiskImage.open(p, { readonly: false, direct: true });
      expect(img.direct).toBe(true);
      img.close();
    } finally {
      rmSync(p, { force: true });
    }
  });
});

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

describe('DiskImage.open on images of unusual kinds', () => {
  const root = process.getuid?.() === 0;

  // In a child process: the old open() blocked in the kernel, which no test timeout can interrupt.
  it('refuses a FIFO at once instead of waiting for a writer (readonly=on too)', () => {
    const d = mkdtempSync(join(tmpdir(), 'kumo-img-fifo-'));
    try {
      spawnSync('mkfifo', [join(d, 'f')]);
      for (const ro of ['on', 'off']) {
        const r = spawnSync(process.execPath, [join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${join(d, 'f')},socket=${join(d, 's')},readonly=${ro}`],
          { encoding: 'utf8', timeout: 20_000 });
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(/neither a regular file nor a block device/);
      }
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  }, 60_000);

  it.skipIf(!root)('refuses a read-only block device unless readonly=on (every write would fail IOERR)', () => {
    const d = mkdtempSync(join(tmpdir(), 'kumo-img-ro-'));
    writeFileSync(join(d, 'img'), Buffer.alloc(1 << 20));
    const lo = spawnSync('losetup', ['-f', '--show', '-r', join(d, 'img')], { encoding: 'utf8' });
    try {
      expect(lo.status).toBe(0);
      const dev = lo.stdout.trim();
      expect(() => DiskImage.open(dev, { readonly: false, direct: false })).toThrow(/read-only: serve it with readonly=on/);
      DiskImage.open(dev, { readonly: true, direct: false }).close();
    } finally {
      if (lo.status === 0) spawnSync('losetup', ['-d', lo.stdout.trim()]);
      rmSync(d, { recursive: true, force: true });
    }
  });

  it.skipIf(!root)('finds the 4096-byte O_DIRECT block of an image smaller than 1 KiB (the probe read its end, which checks nothing)', () => {
    const d = mkdtempSync(join(tmpdir(), 'kumo-img-tiny-'));
    const back = join(d, 'fs.img');
    const mnt = join(d, 'mnt');
    writeFileSync(back, Buffer.alloc(16 << 20));
    const lo = spawnSync('losetup', ['-f', '--show', '--sector-size', '4096', back], { encoding: 'utf8' });
    let mounted = false;
    try {
      expect(lo.status).toBe(0);
      const dev = lo.stdout.trim();
      expect(spawnSync('mkfs.ext4', ['-q', '-F', '-b', '4096', dev]).status).toBe(0);
      mkdirSync(mnt);
      expect(spawnSync('mount', [dev, mnt]).status).toBe(0);
      mounted = true;
      writeFileSync(join(mnt, 'tiny'), Buffer.alloc(512));
      const img = DiskImage.open(join(mnt, 'tiny'), { readonly: false, direct: true });
      const alignment = img.alignment;
      img.close(); // before the assertion: an open image would keep the mount busy
      expect(alignment).toBe(4096);
    } finally {
      if (mounted) spawnSync('umount', [mnt]);
      if (lo.status === 0) spawnSync('losetup', ['-d', lo.stdout.trim()]);
      rmSync(d, { recursive: true, force: true });
    }
  });
});
