// A guest that corrupts its request ring again after every restart (a device reset in a loop): one error line with a
// stack per restart, unbounded. Rate-limited now.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { compactLayout } from '../../protocol/virtqueue/index.js';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import { bits, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/index.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

it('a request ring corrupted after every restart is logged rate-limited', async () => {
  const dir = mkdtempSync('/tmp/kumo-fs-corrupt-');
  const share = join(dir, 'share');
  mkdirSync(share);
  const sock = join(dir, 's.sock');
  const logFile = join(dir, 'log');
  const fd = openSync(logFile, 'w');
  const child: ChildProcess = spawn(process.execPath, [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'],
    { stdio: ['ignore', 'ignore', fd], env: { ...process.env, KUMO_LOG: 'info' } });
  closeSync(fd);
  const fds = [eventfd(), eventfd(), eventfd(), eventfd()];
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
  cleanups.push(() => {
    child.kill('SIGKILL');
    fds.forEach(closeQuiet);
    mem.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const fe = await VhostUserFrontend.connect(sock, { retryForMs: 10_000 });
  fe.negotiate(bits(VIRTIO_F_VERSION_1), protocolFeatures(ProtocolFeature.REPLY_ACK));
  fe.setMemTable(mem);
  const hiprio = compactLayout(0x1000, 64);
  const req = compactLayout(0x8000, 64);
  fe.setupVring(0, mem, hiprio, fds[0], fds[1]);
  fe.setupVring(1, mem, req, fds[2], fds[3]);
  for (let i = 0; i < 300; i++) {
    mem.writeU16(req.availAddr + 2, 1000); // 1000 ahead of a 64-entry ring
    eventfdWrite(fds[2]);
    await new Promise((r) => setTimeout(r, 2));
    fe.getVringBase(1); // the driver resets the device and starts the ring again
    mem.writeU16(req.availAddr + 2, 0);
    mem.writeU16(req.usedAddr + 2, 0);
    fe.setupVring(1, mem, req, fds[2], fds[3], 0);
  }
  fe.close();
  await new Promise((r) => setTimeout(r, 300));
  const lines = readFileSync(logFile, 'utf8').match(/ring is broken/g)?.length ?? 0;
  expect(lines).toBeGreaterThan(0);
  expect(lines).toBeLessThan(150); // one per restart (300) without the limiter
}, 60_000);
