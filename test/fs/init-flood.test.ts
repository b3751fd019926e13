// A guest kernel sends INIT as often as it likes (a hostile one in a loop): each INIT used to write two info lines
// (or one error for a refused version), some 15,000 lines a second at the default level. They are rate-limited now;
// QEMU's virtiofsd writes nothing for a repeated INIT.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect, it } from 'vitest';
import { FuseClient, FuseReplyError } from '../../protocol/fuse/index.js';
import { InitIn } from '../../protocol/fuse/structs.js';
import { Op, FUSE_KERNEL_VERSION } from '../../protocol/fuse/opcodes.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
let dir = '';
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
  rmSync(dir, { recursive: true, force: true });
});

it('a guest sending INIT in a loop gets a bounded number of log lines, and the lines still say what happened', async () => {
  dir = mkdtempSync('/tmp/kumo-init-flood-');
  const share = join(dir, 'share');
  mkdirSync(share);
  const sock = join(dir, 's.sock');
  const logFile = join(dir, 'log');
  const fd = openSync(logFile, 'w');
  const child: ChildProcess = spawn(process.execPath, [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'],
    { stdio: ['ignore', 'ignore', fd], env: { ...process.env, KUMO_LOG: 'info' } });
  closeSync(fd);
  const t = await VirtioFsTransport.connect(sock, 15_000, 256, 1);
  cleanups.push(() => {
    t.close();
    child.kill('SIGKILL');
  });
  const client = new FuseClient(t);
  const lines = (re: RegExp) => readFileSync(logFile, 'utf8').split('\n').filter((l) => re.test(l)).length;
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
