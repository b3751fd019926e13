// A front-end that hands over a kick fd that hangs up (the read end of a pipe whose write end it closed) with every
// SET_VRING_KICK: the back-end says so, rate-limited, and stopping that ring later is no error (its kick fd was
// taken out of epoll already). It used to write a warning per message, then an error with a stack trace
// ("removing a kick fd from epoll failed: ENOENT") at the next SET_VRING_KICK, some 3,000 lines a second.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { BlkVuClient } from '../blk/vu-client.js';
import { closeQuiet, pipe2 } from '../../protocol/sys/fd.js';
import { VIRTIO_BLK_T_IN } from '../../protocol/virtio/index.js';

const BIN = fileURLToPath(new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url));
let dir = '';
const kids: ChildProcess[] = [];
afterEach(() => {
  for (const k of kids.splice(0)) k.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

it('a kick fd that hangs up, sent again and again, is logged rate-limited and without a spurious error', async () => {
  dir = mkdtempSync('/tmp/kumo-kick-hup-');
  const img = join(dir, 'd.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const sock = join(dir, 's');
  const logFile = join(dir, 'log');
  const fd = openSync(logFile, 'w');
  kids.push(spawn(process.execPath, [BIN, '--block-backend', `path=${img},socket=${sock}`], { stdio: ['ignore', 'ignore', fd], env: { ...process.env, KUMO_LOG: 'info' } }));
  closeSync(fd);
  for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  const cl = await BlkVuClient.connect(sock);
  try {
    for (let i = 0; i < 2000; i++) {
      const [r, w] = pipe2();
      closeQuiet(w);
      cl.fe.setVringKick(0, r);
      closeQuiet(r);
    }
    // A good kick fd again: the ring serves.
    cl.fe.setVringKick(0, cl.queues[0].kick);
    const buf = cl.buf(512);
    const st = cl.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: buf, len: 512 }], 1);
    cl.run(0, 1);
    expect(cl.mem.readU8(st)).toBe(0);
  } finally {
    cl.close();
  }
  await new Promise((r) => setTimeout(r, 300));
  const log = readFileSync(logFile, 'utf8');
  expect(log).not.toMatch(/removing a kick fd from epoll failed/);
  const hup = log.match(/kick fd hung up or failed/g)?.length ?? 0;
  expect(hup).toBeGreaterThan(0);
  expect(hup).toBeLessThan(200);
}, 60_000);
