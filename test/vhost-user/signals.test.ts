// Signals an operator or a session sends the back-ends:
// - SIGUSR1 opened Node's inspector on 127.0.0.1:9229 in blk and virtiofsd (and the VMM): any local user could then
//   run code in the (root) process. kumo-vhost-user-net documents SIGUSR1 as its counter dump, so it gets sent.
// - SIGHUP (the terminal or session that started a back-end went away) killed them with status 129, the socket file
//   left behind; qemu-storage-daemon and virtiofsd stop in order.
// - virtiofsd --syslog: a restarted syslog daemon listens on a new socket; every later line was lost.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { kumoVu } from './kumo-vu-run.js';
import { closeQuiet, setNonBlocking } from '../../protocol/sys/fd.js';
import { recvMsg, unixDgramBind } from '../../protocol/sys/socket.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const inspectorPortOpen = (): Promise<boolean> => new Promise((r) => {
  const s = connect(9229, '127.0.0.1');
  s.once('connect', () => {
    s.destroy();
    r(true);
  });
  s.once('error', () => r(false));
});

let dir = '';
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function backend(kind: 'blk' | 'fs', extra: string[] = [], env: Record<string, string> = {}): { child: ChildProcess; sock: string; stderr: () => string } {
  dir = mkdtempSync('/tmp/kumo-signals-');
  const sock = join(dir, 's.sock');
  writeFileSync(join(dir, 'img'), Buffer.alloc(1 << 20));
  mkdirSync(join(dir, 'share'));
  const args = kind === 'blk'
    ? [join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${join(dir, 'img')},socket=${sock}`]
    : [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${join(dir, 'share')}`, '--sandbox=none', ...extra];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return { child, sock, stderr: () => err };
}

async function ready(sock: string): Promise<void> {
  for (let i = 0; i < 150 && !existsSync(sock); i++) await sleep(100);
  expect(existsSync(sock)).toBe(true);
}

describe.each(['blk', 'fs'] as const)('kumo %s back-end', (kind) => {
  it.skipIf(spawnSync('ss', ['-ltn', 'sport = :9229']).stdout?.toString().includes('9229'))('SIGUSR1 opens no inspector, and the back-end serves on', async () => {
    const { child, sock, stderr } = backend(kind);
    await ready(sock);
    child.kill('SIGUSR1');
    await sleep(800);
    expect(stderr()).not.toContain('Debugger listening');
    expect(await inspectorPortOpen()).toBe(false);
    expect(child.exitCode).toBe(null);
  }, 30_000);

  it('SIGHUP stops it in order: exit 0, socket file removed', async () => {
    const { child, sock } = backend(kind);
    await ready(sock);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGHUP');
    expect(await Promise.race([exited, sleep(8000).then(() => 'hung')])).toBe(0);
    expect(existsSync(sock)).toBe(false);
  }, 30_000);
});

describe('kumo-virtiofsd --syslog', () => {
  it('reaches syslog again after it restarted on a new socket', async () => {
    const logDir = mkdtempSync('/tmp/kumo-signals-log-');
    const logSock = join(logDir, 'log.sock');
    let lfd = unixDgramBind(logSock);
    const { child, sock } = backend('fs', ['--syslog', '--log-level=info'], { KUMO_SYSLOG_SOCKET: logSock });
    try {
      await ready(sock);
      // syslog restarts: its socket goes and a new one is bound at the path.
      closeQuiet(lfd);
      unlinkSync(logSock);
      lfd = unixDgramBind(logSock);
      setNonBlocking(lfd, true);
      // A line logged while syslog was away may have tried to connect already: the next try comes a second later.
      await sleep(1100);
      // The main thread logs a front-end's arrival.
      kumoVu(['fs', '--socket', sock, 'run', '-'], 'ls\n');
      const lines: string[] = [];
      const buf = new Uint8Array(8192);
      for (let i = 0; i < 50 && !lines.some((l) => l.includes('front-end connected')); i++) {
        const r = recvMsg(lfd, buf);
        if (r.n > 0) lines.push(Buffer.from(buf.subarray(0, r.n)).toString());
        else await sleep(50);
      }
      expect(lines.some((l) => l.includes('front-end connected')), lines.join('\n')).toBe(true);
      expect(child.exitCode === null || child.exitCode === 0).toBe(true);
    } finally {
      closeQuiet(lfd);
      rmSync(logDir, { recursive: true, force: true });
    }
  }, 30_000);
});
