// What a front-end can make kumo-vhost-user-blk (and, through the shared daemon code, net and virtiofsd) write to its
// log by repeating itself stays bounded (WarnLimiter), and still says what happened.
//
// A kick fd that hangs up (the read end of a pipe whose write end was closed) with every SET_VRING_KICK: it used to
// write a warning per message, then an error with a stack trace ("removing a kick fd from epoll failed: ENOENT") at the
// next SET_VRING_KICK, some 3,000 lines a second.
//
// A front-end that connects, has requests refused, and connects again in a loop: each connection had a rate limiter of
// its own for its refusals (20 lines a connection got through, each with a stack) and said "connected" and
// "disconnected" unlimited, some 3,000 lines a second. The limiters now outlive the connection. (qemu-storage-daemon:
// one vu_panic line per such connection.)
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { BlkVuClient } from '../blk/vu-client.js';
import { closeQuiet, eventfdWrite, pipe2 } from '../../protocol/sys/fd.js';
import { compactLayout } from '../../protocol/virtqueue/index.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import { bits, VIRTIO_BLK_T_IN, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/index.js';

const BIN = fileURLToPath(new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url));
let dir = '';
const kids: ChildProcess[] = [];
afterEach(() => {
  for (const k of kids.splice(0)) k.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** kumo-vhost-user-blk on a 1 MiB image at KUMO_LOG=info, its stderr in `logFile`; resolves once it listens. */
async function blkDaemonLoggingInfo(): Promise<{ sock: string; logFile: string }> {
  dir = mkdtempSync('/tmp/kumo-log-floods-');
  const img = join(dir, 'd.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const sock = join(dir, 's');
  const logFile = join(dir, 'log');
  const fd = openSync(logFile, 'w');
  kids.push(spawn(process.execPath, [BIN, '--block-backend', `path=${img},socket=${sock}`], { stdio: ['ignore', 'ignore', fd], env: { ...process.env, KUMO_LOG: 'info' } }));
  closeSync(fd);
  for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
  return { sock, logFile };
}

/** Lines a WarnLimiter lets through in `ms`: 20 a 1 s window and a summary of what it held back, windows cut anywhere. */
const allowedLines = (ms: number) => 21 * (Math.ceil(ms / 1000) + 1);

it('a kick fd that hangs up, sent again and again, is logged rate-limited and without a spurious error', async () => {
  const started = Date.now();
  const { sock, logFile } = await blkDaemonLoggingInfo();
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
  // On a loaded host the 2,000 messages take several windows; unlimited, each one would log.
  expect(hup).toBeLessThanOrEqual(Math.min(allowedLines(Date.now() - started), 1000));
}, 60_000);

it('a front-end reconnecting in a loop with refused requests gets a bounded number of log lines', async () => {
  const started = Date.now();
  const { sock, logFile } = await blkDaemonLoggingInfo();
  let refused = 0;
  for (let i = 0; i < 200; i++) {
    const fe = await VhostUserFrontend.connect(sock, { retryForMs: 5000 });
    fe.negotiate(bits(VIRTIO_F_VERSION_1), protocolFeatures(ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG));
    for (let j = 0; j < 10; j++) {
      try {
        fe.setConfig(0, Uint8Array.of(1)); // only the writeback byte is writable: refused
      } catch {
        refused++;
      }
    }
    fe.close();
  }
  expect(refused).toBe(2000);
  await new Promise((r) => setTimeout(r, 300));
  const log = readFileSync(logFile, 'utf8');
  const count = (re: RegExp) => log.match(re)?.length ?? 0;
  expect(count(/"msg":"request refused"/g)).toBeGreaterThan(0);
  // Without the shared limiters: 2000 refusals, 200 connected, 200 disconnected.
  const allowed = allowedLines(Date.now() - started);
  expect(count(/"msg":"request refused"/g)).toBeLessThanOrEqual(Math.min(allowed, 1000));
  expect(count(/"msg":"front-end connected"/g) + count(/"msg":"front-end disconnected"/g)).toBeLessThanOrEqual(Math.min(2 * allowed, 300));
  // The next front-end is still said, with what was held back.
  await new Promise((r) => setTimeout(r, 1100));
  const fe = await VhostUserFrontend.connect(sock, { retryForMs: 5000 });
  fe.getFeatures();
  fe.close();
  await new Promise((r) => setTimeout(r, 300));
  expect(readFileSync(logFile, 'utf8')).toMatch(/"heldBack":\d+.*"msg":"front-end (connected|disconnected)"/);
}, 60_000);

it('a ring the guest corrupts again after every restart is logged rate-limited', async () => {
  const { sock, logFile } = await blkDaemonLoggingInfo();
  const cl = await BlkVuClient.connect(sock);
  const l = compactLayout(0x1000, 128); // the client's ring 0
  try {
    for (let i = 0; i < 300; i++) {
      cl.mem.writeU16(l.availAddr + 2, 1000); // avail idx 1000 ahead of a 128-entry ring: the ring is corrupt
      eventfdWrite(cl.queues[0].kick);
      await new Promise((r) => setTimeout(r, 1));
      cl.fe.getVringBase(0); // the driver resets the device and starts the ring again
      cl.mem.writeU16(l.availAddr + 2, 0);
      cl.mem.writeU16(l.usedAddr + 2, 0);
      cl.fe.setupVring(0, cl.mem, l, cl.queues[0].kick, cl.queues[0].call, 0);
    }
  } finally {
    cl.close();
  }
  // The flood has stopped: what was held back is still counted, from the queue thread's own loop (it never yields).
  await new Promise((r) => setTimeout(r, 2000));
  const log = readFileSync(logFile, 'utf8');
  const stopped = log.match(/queue handler failed; ring stopped/g)?.length ?? 0;
  expect(stopped).toBeGreaterThan(0);
  expect(stopped).toBeLessThan(150); // one per restart (300) without the limiter
  // Counts held back at the end of a window are said on lines of their own (summary), which only the queue thread's loop
  // writes. Not only the last line: on a loaded host the flood's last window may hold nothing back.
  const lines = log.trim().split('\n').filter((l) => /queue handler failed; ring stopped/.test(l)).map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(lines.some((l) => l.summary === true && typeof l.heldBack === 'number' && l.heldBack > 0)).toBe(true);
}, 60_000);
