// What a guest can make kumo-virtiofsd write to its log by repeating itself stays bounded (WarnLimiter), and still says
// what happened.
//
// INIT in a loop: each INIT used to write two info lines (or one error for a refused version), some 15,000 lines a
// second at the default level; QEMU's virtiofsd writes nothing for a repeated INIT.
//
// A request ring corrupted again after every restart (a device reset in a loop): one error line with a stack per
// restart.
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { FuseClient, FuseReplyError } from '../../protocol/fuse/index.js';
import { InitIn } from '../../protocol/fuse/structs.js';
import { Op, FUSE_KERNEL_VERSION } from '../../protocol/fuse/opcodes.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';
import { corruptRingAfterEachRestart } from '../vhost-user/corrupt-ring.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** kumo-virtiofsd (--sandbox=none) at KUMO_LOG=info, its stderr in a file; returns its socket and a line counter. */
function fsDaemonLoggingInfo(): { sock: string; lines: (re: RegExp) => number } {
  const dir = mkdtempSync('/tmp/kumo-fs-log-floods-');
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const share = join(dir, 'share');
  mkdirSync(share);
  const sock = join(dir, 's.sock');
  const logFile = join(dir, 'log');
  const fd = openSync(logFile, 'w');
  const child = spawn(process.execPath, [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'],
    { stdio: ['ignore', 'ignore', fd], env: { ...process.env, KUMO_LOG: 'info' } });
  closeSync(fd);
  cleanups.push(() => child.kill('SIGKILL'));
  return { sock, lines: (re) => readFileSync(logFile, 'utf8').split('\n').filter((l) => re.test(l)).length };
}

it('a guest sending INIT in a loop gets a bounded number of log lines, and the lines still say what happened', async () => {
  const { sock, lines } = fsDaemonLoggingInfo();
  const t = await VirtioFsTransport.connect(sock, 15_000, 256, 1);
  cleanups.push(() => t.close());
  const client = new FuseClient(t);
  for (let i = 0; i < 2000; i++) await client.init();
  await new Promise((r) => setTimeout(r, 1100)); // a window of its own for the refusals
  const oldInit = InitIn.pack({ major: FUSE_KERNEL_VERSION, minor: 5, maxReadahead: 0, flags: 0, flags2: 0 });
  for (let i = 0; i < 1000; i++) {
    await expect(client.call(Op.INIT, 0, [oldInit], 0, 'INIT')).rejects.toBeInstanceOf(FuseReplyError);
  }
  await new Promise((r) => setTimeout(r, 300));
  const inits = lines(/FUSE session initialised|INIT without DESTROY/);
  const refused = lines(/unsupported FUSE version/);
  expect(inits).toBeGreaterThan(0);
  expect(refused).toBeGreaterThan(0);
  // Without the limiter: 4000 and 1000.
  expect(inits).toBeLessThan(400);
  expect(refused).toBeLessThan(400);
  // The session still works.
  await client.init();
  expect((await client.getattr(1)).mode & 0o170000).toBe(0o040000);
}, 120_000);

it('a request ring corrupted after every restart is logged rate-limited', async () => {
  const { sock, lines } = fsDaemonLoggingInfo();
  await corruptRingAfterEachRestart(sock, 300); // ring 1: the request queue
  await new Promise((r) => setTimeout(r, 300));
  const n = lines(/ring is broken/);
  expect(n).toBeGreaterThan(0);
  expect(n).toBeLessThan(150); // one per restart (300) without the limiter
}, 60_000);
