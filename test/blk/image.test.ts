import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { existsSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
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
