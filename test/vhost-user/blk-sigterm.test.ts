import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { eventfdWrite } from '../../protocol/sys/fd.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from '../blk/vu-client.js';

const SIZE = 32 << 20;
const BS = 64 << 10;
const BATCH = 40;

let dir = '';
const children: ChildProcess[] = [];
const clients: BlkVuClient[] = [];

afterEach(async () => {
  clients.splice(0).forEach((c) => c.close());
  for (const c of children.splice(0)) await stopBackend(c, 'SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const exitOf = (c: ChildProcess) => new Promise<{ code: number | null; at: number }>((r) => c.once('exit', (code) => r({ code, at: Date.now() })));

describe('kumo-vhost-user-blk shutdown', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)('%s with a front-end connected and writes in flight: prompt exit, lock released, acked data kept', async (signal) => {
    dir = mkdtempSync('/var/tmp/kumo-vu-sigterm-');
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(SIZE));
    const spec = `path=${img},socket=${sock},queue_size=128,num_queues=2`;
    const child = await startBackend(spec);
    children.push(child);
    // writethrough: each write waits for an fdatasync, so requests are in io_uring when the signal lands
    const c = await BlkVuClient.connect(sock, { queueSize: 128, memSize: 64 << 20, numQueues: 2, writethrough: true, indirect: false });
    clients.push(c);
    const acked = new Map<number, Buffer>();
    const bufs = Array.from({ length: BATCH }, () => c.buf(BS, 4096));
    for (let k = 0; k < BATCH; k++) {
      const data = randomBytes(BS);
      c.mem.write(bufs[k], data);
      acked.set(k, data);
      c.add(0, VIRTIO_BLK_T_OUT, k * (BS / 512), [{ addr: bufs[k], len: BS }], [], k);
    }
    c.run(0, BATCH);
    // Now keep both queues busy and signal without waiting for the completions.
    for (const q of [0, 1]) {
      for (let k = 0; k < BATCH; k++) c.add(q, VIRTIO_BLK_T_OUT, (BATCH + q * BATCH + k) * (BS / 512), [{ addr: bufs[k], len: BS }], [], k);
      c.queues[q].driver.publish();
      eventfdWrite(c.queues[q].kick);
    }
    const exited = exitOf(child);
    const t0 = Date.now();
    child.kill(signal);
    const { code, at } = await exited;
    expect(code).toBe(0);
    // Prompt exit, with slack for a loaded machine (a worker that never answers would take far longer).
    expect(at - t0).toBeLessThan(5000);
    c.close();
    clients.pop();

    // An immediate restart on the same image must get the image lock.
    const again = await startBackend(spec);
    children.push(again);
    const r = await BlkVuClient.connect(sock, { queueSize: 128, memSize: 64 << 20 });
    clients.push(r);
    const rb = Array.from({ length: BATCH }, () => r.buf(BS, 4096));
    const sts = [...acked.keys()].map((k) => r.add(0, VIRTIO_BLK_T_IN, k * (BS / 512), [], [{ addr: rb[k], len: BS }], k));
    r.run(0, BATCH);
    expect(sts.every((s) => r.mem.readU8(s) === VIRTIO_BLK_S_OK)).toBe(true);
    for (const [k, data] of acked) expect(Buffer.from(r.mem.slice(rb[k], BS)).equals(data)).toBe(true);
    const file = readFileSync(img);
    for (const [k, data] of acked) expect(file.subarray(k * BS, (k + 1) * BS).equals(data)).toBe(true);
  });
});
