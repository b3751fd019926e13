// An error nothing catches on a back-end's main thread (a bug, an output stream that fails) must end the process.
// A thread-pool thread blocked in accept4 (waiting for a front-end) or recvmsg (serving one) kept Node's exit
// waiting for good: the process neither served nor ended, and ignored SIGTERM. kumo-vhost-user-net also raised such
// an error whenever its stdout (read only for the ready line, then closed) could not take its counters.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { BlkVuClient } from '../blk/vu-client.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';
import { NetNs, netnsUnavailable } from '../net/netns.js';
import { BackendProc, backendBin } from '../net/harness.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const THROWER = fileURLToPath(new URL('./fixtures/throw-on-usr2.cjs', import.meta.url));
let dir = '';
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function start(args: string[], sock: string): Promise<{ child: ChildProcess; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'ignore'], env: { ...process.env, KUMO_LOG: 'warn', NODE_OPTIONS: `--require ${THROWER}` } });
  children.push(child);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  for (let i = 0; i < 150 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
  expect(existsSync(sock)).toBe(true);
  return { child, exited };
}

/** Exit code once `child` got SIGUSR2, or 'hung' if it is still there after 8 s (SIGTERM did not end it either). */
async function raise(child: ChildProcess, exited: Promise<number | null>): Promise<number | null | 'hung'> {
  child.kill('SIGUSR2');
  const late = new Promise<'late'>((r) => setTimeout(() => r('late'), 6000));
  const first = await Promise.race([exited, late]);
  if (first !== 'late') return first;
  child.kill('SIGTERM');
  return Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 2000))]);
}

function blkArgs(): { args: string[]; sock: string } {
  dir = mkdtempSync('/tmp/kumo-uncaught-');
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  const sock = join(dir, 'blk.sock');
  return { args: [join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${sock}`], sock };
}

describe('an uncaught error on a back-end\'s main thread ends the process', () => {
  it('kumo-vhost-user-blk waiting for a front-end: exit 1, socket file removed', async () => {
    const { args, sock } = blkArgs();
    const { child, exited } = await start(args, sock);
    expect(await raise(child, exited)).toBe(1);
    expect(existsSync(sock)).toBe(false);
  }, 30_000);

  it('kumo-vhost-user-blk serving a front-end', async () => {
    const { args, sock } = blkArgs();
    const { child, exited } = await start(args, sock);
    const c = await BlkVuClient.connect(sock);
    try {
      expect(await raise(child, exited)).toBe(1);
    } finally {
      c.close();
    }
  }, 30_000);

  it('kumo-virtiofsd serving a front-end', async () => {
    dir = mkdtempSync('/tmp/kumo-uncaught-');
    mkdirSync(join(dir, 'share'));
    const sock = join(dir, 'fs.sock');
    const { child, exited } = await start([join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${join(dir, 'share')}`, '--sandbox=none'], sock);
    const c = await VirtioFsTransport.connect(sock, 15_000, 256, 1);
    try {
      expect(await raise(child, exited)).toBe(1);
    } finally {
      c.close();
    }
  }, 30_000);
});

const why = netnsUnavailable();
if (why) console.warn(`test/vhost-user/uncaught-error.test.ts: net case skipped: ${why}`);

describe.skipIf(why !== null)('kumo-vhost-user-net whose stdout was closed after the ready line', () => {
  it('serves on through SIGUSR1 (counters) and stops at SIGTERM', async () => {
    const ns = NetNs.create('stdout');
    const sock = `/tmp/kumo-net-stdout-${process.pid}.sock`;
    const be = new BackendProc(ns.spawn(process.execPath, [backendBin, '--net-backend', `ip=10.78.0.1,mask=255.255.255.0,socket=${sock}`], { env: { ...process.env, KUMO_LOG: 'warn' } }));
    try {
      expect(JSON.parse(await be.nextLine(30_000))).toMatchObject({ ready: true });
      be.proc.stdout!.destroy(); // a supervisor reading only the ready line (`| head -1`)
      for (let i = 0; i < 3; i++) {
        be.proc.kill('SIGUSR1');
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(be.exited, be.stderr).toBe(null);
      const exited = new Promise<number | null>((r) => be.proc.once('exit', (code) => r(code)));
      be.proc.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 5000))]);
      expect(code, be.stderr).toBe(0);
    } finally {
      be.proc.kill('SIGKILL');
      ns.delete();
    }
  }, 60_000);
});
