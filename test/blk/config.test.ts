import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlockBackendConfig } from '../../backends/vhost-user-blk/config.js';
import { BlkBackend, serialFor } from '../../backends/vhost-user-blk/backend.js';
import type { DiskImage } from '../../backends/vhost-user-blk/image.js';
import {
  BlkConfig, bit, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_MQ,
  VIRTIO_RING_F_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
} from '../../protocol/virtio/index.js';

describe('BlockBackendConfig', () => {
  it('parses with Cloud Hypervisor defaults', () => {
    const c = BlockBackendConfig.parse('path=/tmp/img,socket=/tmp/s.sock');
    expect(c.toJSON()).toEqual({
      path: '/tmp/img', socket: '/tmp/s.sock', num_queues: 1, queue_size: 1024, readonly: false, direct: false, poll_queue: true, locking: true,
    });
  });

  it('parses every key and round-trips', () => {
    const c = BlockBackendConfig.parse('path=/a b/img,socket=/s,num_queues=4,queue_size=128,readonly=on,direct=true,poll_queue=off,locking=off');
    expect(c.numQueues).toBe(4);
    expect(c.queueSize).toBe(128);
    expect(c.readonly).toBe(true);
    expect(c.direct).toBe(true);
    expect(c.pollQueue).toBe(false);
    expect(c.locking).toBe(false);
    expect(c.path).toBe('/a b/img');
    expect(BlockBackendConfig.parse(c.toString()).toJSON()).toEqual(c.toJSON());
  });

  it('trims values as Cloud Hypervisor does (a stray space never ends up in a path)', () => {
    const c = BlockBackendConfig.parse('path=/tmp/img ,socket= /tmp/s.sock ');
    expect([c.path, c.socket]).toEqual(['/tmp/img', '/tmp/s.sock']);
  });

  it.each([
    ['socket=/s', /missing required option "path"/],
    ['path=/a', /missing required option "socket"/],
    ['path=/a,socket=/s,bogus=1', /unknown option "bogus"/],
    ['path=/a,socket=/s,num_queues=0', /num_queues/],
    ['path=/a,socket=/s,queue_size=100', /power of two/],
    ['path=/a,socket=/s,readonly=maybe', /readonly/],
    ['path=/a,socket=/s,queue_size=65536', /queue_size/],
  ])('rejects %s', (s, re) => {
    expect(() => BlockBackendConfig.parse(s)).toThrow(re);
  });

  it('has a syntax string for --help', () => {
    expect(BlockBackendConfig.SYNTAX).toContain('path=<image_path>');
    expect(BlockBackendConfig.SYNTAX).toContain('poll_queue=true|false');
  });
});

describe('BlkBackend device model', () => {
  const image = (readonly: boolean) => ({ path: '/var/lib/images/a-very-long-image-name.raw', fd: -1, size: 1 << 30, sectors: (1 << 30) / 512, readonly, direct: false, isBlockDevice: false }) as unknown as DiskImage;

  it('offers the features and config space', () => {
    const b = new BlkBackend(image(false), { numQueues: 4, queueSize: 256, pollQueue: false });
    const f = b.features();
    for (const n of [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES]) {
      expect(f & bit(n)).not.toBe(0n);
    }
    expect(f & bit(VIRTIO_BLK_F_RO)).toBe(0n);
    // MQ, LOG_SHMFD, REPLY_ACK, CONFIG, INFLIGHT_SHMFD, CONFIGURE_MEM_SLOTS
    expect(b.protocolFeatures()).toBe((1n << 0n) | (1n << 1n) | (1n << 3n) | (1n << 9n) | (1n << 12n) | (1n << 15n));
    const cfg = b.getConfig(0, 60);
    const v = new DataView(cfg.buffer);
    expect(Number(v.getBigUint64(0, true))).toBe(2097152);
    expect(v.getUint32(BlkConfig.seg_max, true)).toBe(126);
    expect(v.getUint32(BlkConfig.blk_size, true)).toBe(512);
    expect(v.getUint16(BlkConfig.num_queues, true)).toBe(4);
    expect(v.getUint8(BlkConfig.writeback)).toBe(1);
    expect(v.getUint8(BlkConfig.write_zeroes_may_unmap)).toBe(1);
    expect(b.getConfig(BlkConfig.num_queues, 2)).toEqual(new Uint8Array([4, 0]));
    expect(b.getConfig(200, 4)).toEqual(new Uint8Array(4));
    expect(b.features() & bit(VIRTIO_BLK_F_RO)).toBe(0n);
    expect(new BlkBackend(image(true), { numQueues: 1, queueSize: 128, pollQueue: false }).features() & bit(VIRTIO_BLK_F_RO)).not.toBe(0n);
  });

  it('tracks writeback through WCE, FLUSH and SET_CONFIG', () => {
    const b = new BlkBackend(image(false), { numQueues: 1, queueSize: 128, pollQueue: false });
    b.ackFeatures(bit(VIRTIO_F_VERSION_1));
    expect(b.writethrough).toBe(true);
    b.ackFeatures(bit(VIRTIO_BLK_F_FLUSH));
    expect(b.writethrough).toBe(false);
    b.ackFeatures(bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE));
    expect(b.writethrough).toBe(false);
    b.setConfig(BlkConfig.writeback, new Uint8Array([0]));
    expect(b.writethrough).toBe(true);
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    b.setConfig(BlkConfig.writeback, new Uint8Array([1]));
    expect(b.writethrough).toBe(false);
    // CONFIG_WCE without FLUSH: writeback starts at 0 (virtio 1.2 §5.2.5) and cannot be turned on, since the
    // driver could never make its writes durable.
    b.ackFeatures(bit(VIRTIO_BLK_F_CONFIG_WCE));
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    expect(b.writethrough).toBe(true);
    b.setConfig(BlkConfig.writeback, new Uint8Array([1]));
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    expect(b.writethrough).toBe(true);
    // A later negotiation with FLUSH starts from writeback again.
    b.ackFeatures(bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE));
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(1);
    expect(b.writethrough).toBe(false);
    expect(() => b.setConfig(0, new Uint8Array(8))).toThrow(/writeback/);
    expect(() => b.setConfig(BlkConfig.writeback, new Uint8Array([7]))).toThrow();
  });

  it('keeps a writeback the driver wrote before the front-end sent SET_FEATURES (FEATURES_OK, not yet DRIVER_OK)', () => {
    const b = new BlkBackend(image(false), { numQueues: 1, queueSize: 128, pollQueue: false });
    // QEMU, Cloud Hypervisor and kumo's VMM pass a guest's config write on at once, but send SET_FEATURES at DRIVER_OK.
    b.setConfig(BlkConfig.writeback, new Uint8Array([0]));
    b.ackFeatures(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE));
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    expect(b.writethrough).toBe(true);
  });

  it('saves the writeback choice and takes it back before or after SET_FEATURES (a restarted back-end, see inflight.test.ts)', () => {
    const f = bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE);
    const old = new BlkBackend(image(false), { numQueues: 1, queueSize: 128, pollQueue: false });
    expect([...old.saveState()]).toEqual([0xff]);
    old.ackFeatures(f);
    old.setConfig(BlkConfig.writeback, new Uint8Array([0]));
    const saved = old.saveState();
    expect([...saved]).toEqual([0]);
    // QEMU hands the buffer back before SET_FEATURES; a front-end may do it after.
    const before = new BlkBackend(image(false), { numQueues: 1, queueSize: 128, pollQueue: false });
    before.restoreState(saved);
    before.ackFeatures(f);
    const after = new BlkBackend(image(false), { numQueues: 1, queueSize: 128, pollQueue: false });
    after.ackFeatures(f);
    expect(after.writethrough).toBe(false);
    after.restoreState(saved);
    for (const b of [before, after]) {
      expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
      expect(b.writethrough).toBe(true);
    }
    // No choice saved: the default; anything else is refused and changes nothing.
    after.restoreState(Uint8Array.of(0xff));
    expect(after.writethrough).toBe(false);
    for (const bad of [Uint8Array.of(2), Uint8Array.of(0, 0), new Uint8Array(0)]) expect(() => before.restoreState(bad)).toThrow(/writeback choice/);
    expect(before.writethrough).toBe(true);
  });

  it('keeps the driver\'s writeback across SET_FEATURES until the device is reset', () => {
    const b = new BlkBackend(image(false), { numQueues: 1, queueSize: 128, pollQueue: false });
    const f = bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE);
    b.ackFeatures(f);
    b.setConfig(BlkConfig.writeback, new Uint8Array([0]));
    b.ackFeatures(f);
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(0);
    expect(b.writethrough).toBe(true);
    b.reset();
    b.ackFeatures(f);
    expect(b.getConfig(BlkConfig.writeback, 1)[0]).toBe(1);
    expect(b.writethrough).toBe(false);
  });

  it('serial: st_dev, st_rdev, st_ino in decimal as Cloud Hypervisor builds it, distinct per image', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-serial-'));
    try {
      const a = join(dir, 'a-very-long-image-name-a.raw');
      const b = join(dir, 'a-very-long-image-name-b.raw');
      writeFileSync(a, Buffer.alloc(512));
      writeFileSync(b, Buffer.alloc(512));
      const st = statSync(a, { bigint: true });
      const text = (u: Uint8Array): string => Buffer.from(u).toString('ascii').replace(/\0+$/, '');
      expect(serialFor(a).length).toBe(20);
      expect(text(serialFor(a))).toBe(`${st.dev}${st.rdev}${st.ino}`.slice(0, 20));
      expect(text(serialFor(a))).not.toBe(text(serialFor(b)));
      expect(Buffer.from(serialFor(a)).toString()).not.toContain('image');
      expect(serialFor(join(dir, 'missing'))).toEqual(new Uint8Array(20));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('kumo-vhost-user-blk command line', () => {
  it('refuses --block-backend given twice instead of serving the last one', () => {
    const root = fileURLToPath(new URL('../../', import.meta.url));
    const r = spawnSync(process.execPath, [join(root, 'bin/kumo-vhost-user-blk.js'),
      '--block-backend', 'path=/nonexistent/a,socket=/nonexistent/a.sock', '--block-backend=path=/nonexistent/b,socket=/nonexistent/b.sock'],
    { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/--block-backend given more than once/);
  });

  it('refuses a KUMO_BLK_COMPLETION it does not know instead of ignoring it', () => {
    const root = fileURLToPath(new URL('../../', import.meta.url));
    const dir = mkdtempSync('/tmp/kumo-blk-env-');
    try {
      writeFileSync(join(dir, 'img'), Buffer.alloc(1 << 20));
      const r = spawnSync(process.execPath, [join(root, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${join(dir, 'img')},socket=${join(dir, 's')}`],
        { encoding: 'utf8', timeout: 30_000, env: { ...process.env, KUMO_BLK_COMPLETION: 'poll' } });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/KUMO_BLK_COMPLETION must be eventfd or wait, not "poll"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
