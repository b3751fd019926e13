// A back-end whose stderr is a non-blocking pipe that nobody reads (a launcher stuck, or one that shares its own
// non-blocking stderr): each log line waited up to a second for room before it was dropped. A queue thread logs what
// the guest did wrong (rate-limited to 20 lines a second), so a guest sending bad chains stalled its queue for a
// second per line. Now the first line waits; while stderr stays full, the lines after it are dropped at once.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { BlkVuClient } from '../blk/vu-client.js';
import { closeQuiet, O_CLOEXEC, O_NONBLOCK, pipe2 } from '../../protocol/sys/fd.js';
import { VIRTIO_BLK_T_IN } from '../../protocol/virtio/index.js';

const BIN = fileURLToPath(new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url));

it('bad chains do not stall a queue for a second each while stderr is a full non-blocking pipe', async () => {
  const dir = mkdtempSync('/tmp/kumo-stderr-stall-');
  const img = join(dir, 'd.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const sock = join(dir, 's');
  const [r, w] = pipe2(O_NONBLOCK | O_CLOEXEC);
  const c = spawn(process.execPath, [BIN, '--block-backend', `path=${img},socket=${sock}`], { stdio: ['ignore', 'ignore', w], env: { ...process.env, KUMO_LOG: 'info' } });
  let cl: BlkVuClient | null = null;
  try {
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((res) => setTimeout(res, 50));
    await new Promise((res) => setTimeout(res, 200));
    for (const size of [4096, 1]) {
      try {
        for (;;) writeSync(w, Buffer.alloc(size)); // until EAGAIN: the pipe is full
      } catch {
        // full
      }
    }
    cl = await BlkVuClient.connect(sock);
    const buf = cl.buf(512);
    // Ten chains without a status byte (each one a warning from the queue thread), then a good READ.
    for (let i = 0; i < 10; i++) cl.addRaw(0, [{ addr: buf, len: 16 }], [], 100 + i);
    cl.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: buf, len: 512 }], 1);
    const t0 = Date.now();
    const got = cl.run(0, 11, 60_000);
    expect(got.has(1)).toBe(true);
    // About 11 s before (a second per line), about 1 s now (the first line's wait).
    expect(Date.now() - t0).toBeLessThan(4000);
  } finally {
    cl?.close();
    c.kill('SIGKILL');
    closeQuiet(r);
    closeQuiet(w);
    rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);
