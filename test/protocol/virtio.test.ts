import { describe, expect, it } from 'vitest';
import * as V from '../../protocol/virtio/index.js';

describe('virtio constants', () => {
  it('device ids and common feature bits match the spec', () => {
    expect([V.VIRTIO_ID_NET, V.VIRTIO_ID_BLOCK, V.VIRTIO_ID_CONSOLE, V.VIRTIO_ID_RNG, V.VIRTIO_ID_VSOCK, V.VIRTIO_ID_FS]).toEqual([1, 2, 3, 4, 19, 26]);
    expect(V.bit(V.VIRTIO_F_VERSION_1)).toBe(0x1_0000_0000n);
    expect(V.bits(V.VIRTIO_RING_F_INDIRECT_DESC, V.VIRTIO_RING_F_EVENT_IDX, V.VHOST_USER_F_PROTOCOL_FEATURES)).toBe(0x7000_0000n);
    expect(V.hasFeature(0x1_0000_0000n, V.VIRTIO_F_VERSION_1)).toBe(true);
    expect(V.hasFeature(0x1_0000_0000n, V.VIRTIO_F_RING_PACKED)).toBe(false);
    expect([V.VIRTIO_F_ACCESS_PLATFORM, V.VIRTIO_F_RING_PACKED, V.VIRTIO_F_IN_ORDER, V.VHOST_F_LOG_ALL, V.VIRTIO_F_NOTIFY_ON_EMPTY]).toEqual([33, 34, 35, 26, 24]);
  });

  it('blk config offsets follow struct virtio_blk_config', () => {
    const c = V.BlkConfig;
    expect([c.capacity, c.size_max, c.seg_max, c.geometry_cylinders, c.blk_size, c.physical_block_exp, c.writeback, c.num_queues]).toEqual([0, 8, 12, 16, 20, 24, 32, 34]);
    expect([c.max_discard_sectors, c.max_discard_seg, c.discard_sector_alignment, c.max_write_zeroes_sectors, c.max_write_zeroes_seg, c.write_zeroes_may_unmap]).toEqual([36, 40, 44, 48, 52, 56]);
    expect(V.NetConfig).toMatchObject({ mac: 0, status: 6, max_virtqueue_pairs: 8, mtu: 10 });
    expect(V.FsConfig).toMatchObject({ tag: 0, num_request_queues: 36 });
  });
});

describe('header codecs', () => {
  it('blk request header round-trips and refuses short or huge input', () => {
    const b = V.encodeBlkHeader({ type: V.VIRTIO_BLK_T_OUT, ioprio: 0, sector: 2 ** 40 + 5 });
    expect(b.length).toBe(16);
    expect(Array.from(b.subarray(0, 4))).toEqual([1, 0, 0, 0]);
    expect(V.decodeBlkHeader(b)).toEqual({ type: 1, ioprio: 0, sector: 2 ** 40 + 5 });
    expect(() => V.decodeBlkHeader(b.subarray(0, 15))).toThrow(V.VirtioHeaderError);
    const huge = new Uint8Array(16).fill(0xff);
    expect(() => V.decodeBlkHeader(huge)).toThrow(V.VirtioHeaderError);
  });

  it('blk discard segment round-trips', () => {
    const s = { sector: 123456789012, numSectors: 2048, flags: V.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
    const buf = new Uint8Array(32);
    V.encodeBlkDiscardSegment(s, buf.subarray(16));
    expect(V.decodeBlkDiscardSegment(buf, 16)).toEqual(s);
    expect(() => V.decodeBlkDiscardSegment(buf, 20)).toThrow(V.VirtioHeaderError);
  });

  it('net header is 12 bytes with num_buffers last', () => {
    const h = V.encodeNetHeader({ flags: V.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: V.VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16, numBuffers: 3 });
    expect(Array.from(h)).toEqual([1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0]);
    expect(V.decodeNetHeader(h)).toEqual({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16, numBuffers: 3 });
    expect(() => V.decodeNetHeader(h.subarray(0, 10))).toThrow(V.VirtioHeaderError);
  });

  it('MAC addresses and the fs config', () => {
    expect(V.formatMac(V.parseMac('52:54:00:AB:cd:01'))).toBe('52:54:00:ab:cd:01');
    expect(() => V.parseMac('52:54:00:ab:cd')).toThrow(V.VirtioHeaderError);
    expect(() => V.parseMac('52:54:00:ab:cd:xy')).toThrow(V.VirtioHeaderError);
    const cfg = V.encodeFsConfig('myfs', 2);
    expect(cfg.length).toBe(V.FS_CONFIG_SIZE);
    expect(new TextDecoder().decode(cfg.subarray(0, 4))).toBe('myfs');
    expect(cfg[4]).toBe(0);
    expect(cfg[36]).toBe(2);
    expect(() => V.encodeFsConfig('x'.repeat(37), 1)).toThrow(V.VirtioHeaderError);
  });
});
