import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_S_OK } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';

const SIZE = 16 << 20;
const BLOCK = 4096;

describe.each([
  { mode: 'writeback + FLUSH', writethrough: false },
  { mode: 'writethrough (no FLUSH negotiated: group fdatasync)', writethrough: true },
])('durability across kill -9, $mode', ({ writethrough }) => {
  it('keeps every acked (and flushed) write after the backend is SIGKILLed and restarted', async () => {
    // on disk, not tmpfs, so FLUSH really reaches the file system
    const dir = mkdtempSync('/var/tmp/kumo-dur-');
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(SIZE));
    const expected = new Map<number, Buffer>();
    let child: ChildProcess | null = null;
    let c: BlkVuClient | null = null;
    try {
      child = await startBackend(`path=${img},socket=${sock},queue_size=128`);
      c = await BlkVuClient.connect(sock, { queueSize: 128, memSize: 128 << 20, writethrough });
      for (let round = 0; round < 8; round++) {
        const sts: number[] = [];
        const batch = new Map<number, Buffer>();
        for (let k = 0; k < 40; k++) {
          let blk: number;
          do blk = Math.floor(Math.random() * (SIZE / BLOCK)); while (batch.has(blk));
          const data = randomBytes(BLOCK);
          const a = c.buf(BLOCK);
          c.mem.write(a, data);
          batch.set(blk, data);
          sts.push(c.add(0, VIRTIO_BLK_T_OUT, blk * (BLOCK / 512), [{ addr: a, len: BLOCK }], [], k));
        }
        c.run(0, 40);
        if (!writethrough) {
          sts.push(c.add(0, VIRTIO_BLK_T_FLUSH, 0, [], [], 100));
          c.run(0, 1);
        }
        expect(sts.map((s) => c!.mem.readU8(s)).every((s) => s === VIRTIO_BLK_S_OK)).toBe(true);
        for (const [b, d] of batch) expected.set(b, d);
      }
      // A last batch of acked writes without FLUSH: still in the page cache, must survive the backend's death too.
      const tail = new Map<number, Buffer>();
      for (let k = 0; k < 20; k++) {
        const blk = k * 37;
        const data = randomBytes(BLOCK);
        const a = c.buf(BLOCK);
        c.mem.write(a, data);
        tail.set(blk, data);
        c.add(0, VIRTIO_BLK_T_OUT, blk * (BLOCK / 512), [{ addr: a, len: BLOCK }], [], k);
      }
      c.run(0, 20);
      for (const [b, d] of tail) expected.set(b, d);

      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
      c.close();
      c = null;

      child = await startBackend(`path=${img},socket=${sock},queue_size=128`);
      c = await BlkVuClient.connect(sock, { queueSize: 128, memSize: 128 << 20 });
      const blocks = [...expected.keys()];
      for (let i = 0; i < blocks.length; i += 40) {
        const part = blocks.slice(i, i + 40);
        const bufs = part.map((b, k) => {
          const a = c!.buf(BLOCK);
          c!.add(0, VIRTIO_BLK_T_IN, b * (BLOCK / 512), [], [{ addr: a, len: BLOCK }], k);
          return a;
        });
        c.run(0, part.length);
        part.forEach((b, k) => expect(Buffer.from(c!.mem.slice(bufs[k], BLOCK)).equals(expected.get(b)!)).toBe(true));
      }
      const file = readFileSync(img);
      for (const [b, d] of expected) expect(file.subarray(b * BLOCK, (b + 1) * BLOCK).equals(d)).toBe(true);
    } finally {
      c?.close();
      if (child) await stopBackend(child);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
