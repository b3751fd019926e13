// With --syslog and a level above info, the first line the process sends to syslog can come from a request thread,
// after its seccomp filter. The sink stamps lines with local time, and the first local time makes ICU find the host
// time zone (realpath("/etc/localtime") -> readlink, outside the request thread's list): the first guest-caused
// warning killed the daemon with SIGSYS.
import { describe, it, expect } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { recvMsg, unixDgramBind } from '../../protocol/sys/socket.js';
import { closeQuiet, setNonBlocking } from '../../protocol/sys/fd.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'bin/kumo-virtiofsd.js');

const exited = (c: ChildProcess): Promise<string> =>
  c.exitCode !== null || c.signalCode !== null ? Promise.resolve(`${c.exitCode ?? c.signalCode}`)
    : new Promise((r) => c.once('exit', (code, sig) => r(`${code ?? sig}`)));

describe.each(['namespace', 'chroot', 'none'])('--syslog --log-level=warn --rlimit-nofile=0, --sandbox=%s', (sandbox) => {
  it('a guest request the daemon warns about is answered, and the daemon survives until the front-end leaves', async () => {
    const dir = mkdtempSync('/tmp/kumo-syslog-seccomp-');
    const share = join(dir, 'share');
    mkdirSync(share);
    const logSock = join(dir, 'log.sock');
    const lfd = unixDgramBind(logSock);
    setNonBlocking(lfd, true);
    const sock = join(dir, 's.sock');
    const d = spawn('node', [BIN, `--socket-path=${sock}`, `--shared-dir=${share}`, `--sandbox=${sandbox}`, '--syslog', '--log-level=warn', '--rlimit-nofile=0'], {
      stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_SYSLOG_SOCKET: logSock },
    });
    let err = '';
    d.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const daemonExit = exited(d);
    try {
      // "rawop 26 0": an INIT without its body (a hostile or broken guest driver): answered EINVAL, and a warning.
      const script = join(dir, 'script.txt');
      writeFileSync(script, 'ls\nrawop 26 0\nls\nmkdir x\nls\n');
      const c = spawn('node', [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', sock, '--connect-timeout', '15000', 'run', script], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      c.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      c.stderr!.on('data', (b: Buffer) => (out += b.toString()));
      const code = await exited(c);
      const lines: string[] = [];
      const buf = new Uint8Array(8192);
      for (;;) {
        const r = recvMsg(lfd, buf);
        if (r.n <= 0) break;
        lines.push(Buffer.from(buf.subarray(0, r.n)).toString());
      }
      const status = await daemonExit;
      const diag = `sandbox=${sandbox} client=${code} daemon=${status}\n${out}\nsyslog:\n${lines.join('\n')}\nstderr:\n${err}`;
      expect(out, diag).toContain('> rawop 26 0\nerr EINVAL');
      expect(out).toContain('> mkdir x\nok');
      expect(code).toBe('0');
      expect(status, diag).toBe('0'); // the daemon exits 0 once the front-end leaves, not 159 (SIGSYS)
      expect(lines.some((l) => l.includes('short INIT'))).toBe(true);
    } finally {
      d.kill('SIGKILL');
      closeQuiet(lfd);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
