// A front-end that gives each NUMA node or memory zone its own region, back to back: buffers over a boundary are
// split per region (DeviceQueue), and a request at seg_max must still fit the engine's iovecs.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync, openSync, closeSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { GuestMemory } from '../../protocol/memory/index.js';
import { DeviceQueue, compactLayout } from '../../protocol/virtqueue/index.js';
import { BlkQueueEngine } from '../../backends/vhost-user-blk/engine.js';
import { IMAGE_FLAGS_LENGTH } from '../../backends/vhost-user-blk/bounce.js';
import { encodeBlkHeader, VIRTIO_BLK_T_IN, VIRTIO_BLK_S_OK } from '../../protocol/virtio/index.js';
import { offer, writeDesc, usedIdx } from '../protocol/virtqueue-helpers.js';

const MB = 1 << 20;
const NEXT = 1;
const WRITE = 2;

/** Status of a READ of 126 x 4 KiB whose first `straddles` buffers cross a boundary of 1 MiB regions (17 regions). */
function run(straddles: number): number {
  const mem = GuestMemory.anonymous(Array.from({ length: 17 }, (_, k) => ({ guestAddr: k * MB, size: MB })));
  const layout = compactLayout(0x1000, 128);
  const dq = new DeviceQueue(mem, layout, { eventIdx: false, maxChainLength: 130 });
  const dir = mkdtempSync(join(tmpdir(), 'hunt-blk-'));
  writeFileSync(join(dir, 'img'), Buffer.alloc(MB, 7));
  const fd = openSync(join(dir, 'img'), 'r+');
  const eng = new BlkQueueEngine({ fd, size: MB, readonly: false, serial: Buffer.alloc(20), flags: new Int32Array(IMAGE_FLAGS_LENGTH) }, { queueSize: 128, completion: 'wait' });
  eng.attach(dq, mem);
  const hdr = 0x10000, status = 0xf0000;
  mem.write(hdr, encodeBlkHeader({ type: VIRTIO_BLK_T_IN, ioprio: 0, sector: 0 }));
  mem.writeU8(status, 0xff);
  writeDesc(mem, layout.descAddr, 0, hdr, 16, NEXT, 1);
  for (let k = 0; k < 126; k++) {
    const addr = k < straddles ? (k + 1) * MB - 2048 : 0x20000 + k * 4096; // the rest inside region 0
    writeDesc(mem, layout.descAddr, 1 + k, addr, 4096, WRITE | NEXT, 2 + k);
  }
  writeDesc(mem, layout.descAddr, 127, status, 1, WRITE, 0);
  offer(mem, layout, 0);
  eng.processAvail();
  for (let i = 0; i < 100 && usedIdx(mem, layout) === 0; i++) {
    eng.drain();
    eng.processCompletions();
  }
  const st = mem.readU8(status);
  eng.close();
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
  mem.close();
  return st;
}

describe('a blk READ of seg_max (126) data descriptors in memory made of regions back to back', () => {
  it.each([0, 3, 16])('is served when %i of its buffers run over a region boundary (each becomes two segments)', (n) => {
    expect(run(n)).toBe(VIRTIO_BLK_S_OK);
  });
});
