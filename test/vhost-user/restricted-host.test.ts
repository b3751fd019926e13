// The back-ends on hosts that restrict them, as container runtimes and service managers do.
// - At a pids limit (a pod's pids limit, docker --pids-limit, systemd TasksMax) io_uring cannot start an io-wq worker
//   and cancels the operation it would have run (-ECANCELED). The back-ends run such operations themselves: blk took
//   a cancelled FLUSH for a failed write-back and failed every later FLUSH for good; virtiofsd answered FSYNC ECANCELED.
// - Where a seccomp profile refuses a syscall a back-end cannot do without, it says so at start in one line (what is
//   refused, what to allow) instead of a stack trace, or, for openat2, instead of failing every guest request.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { kumoVu } from './kumo-vu-run.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP } from '../../protocol/virtio/index.js';
import { BlkVuClient } from '../blk/vu-client.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PIDS = '/sys/fs/cgroup/pids';
const why = process.getuid?.() !== 0 ? 'not root' : !existsSync(join(PIDS, 'cgroup.procs')) ? `no cgroup v1 pids hierarchy at ${PIDS}` : null;
if (why !== null) console.log(`test/vhost-user/restricted-host.test.ts: pids limit cases skipped: ${why}`);
const DENY = fileURLToPath(new URL('./fixtures/deny-syscalls.py', import.meta.url));
const noPython = spawnSync('python3', ['-c', '0']).error !== undefined;
if (noPython) console.log('test/vhost-user/restricted-host.test.ts: seccomp cases skipped: no python3 (the filter launcher)');

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

async function waitFor(path: string): Promise<void> {
  for (let i = 0; i < 150 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 100));
}

/** Starts `args` and, once `sock` exists, holds it at its current thread count. */
async function startAtLimit(args: string[], sock: string): Promise<{ child: ChildProcess; cg: string }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'warn' } });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const cg = join(PIDS, `kumo-thread-limit-${process.pid}-${child.pid}`);
  cleanups.push(() => {
    child.kill('SIGKILL');
    spawnSync('sh', ['-c', `while grep -q . ${cg}/cgroup.procs; do sleep 0.05; done`], { timeout: 5000 });
    rmdirSync(cg);
    if (process.env.KUMO_TEST_DEBUG) console.log(err);
  });
  await waitFor(sock);
  mkdirSync(cg);
  writeFileSync(join(cg, 'cgroup.procs'), String(child.pid));
  writeFileSync(join(cg, 'pids.max'), String(readdirSync(`/proc/${child.pid}/task`).length));
  return { child, cg };
}

/** A fresh directory (removed after the test) with a zeroed image: the blk command line's arguments for it. */
function blkImage(base: string, size: number): { dir: string; sock: string; args: string[] } {
  const dir = mkdtempSync(base);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(size));
  const sock = join(dir, 'blk.sock');
  return { dir, sock, args: [join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${sock}`] };
}

describe.skipIf(why !== null)('back-ends at a pids limit (io_uring cannot start a worker thread)', () => {
  it('kumo-vhost-user-blk: writes and FLUSHes pass, and FLUSH still passes once the limit is gone', async () => {
    const { sock, args } = blkImage('/var/tmp/kumo-thread-limit-', 16 << 20);
    const { cg } = await startAtLimit(args, sock);
    const first = kumoVu(['blk', '--socket', sock, 'verify']);
    expect(first, first).toMatch(/RESULT: PASS/);
    expect(first).toMatch(/FLUSH/);
    writeFileSync(join(cg, 'pids.max'), 'max');
    const second = kumoVu(['blk', '--socket', sock, 'verify']);
    expect(second, second).toMatch(/RESULT: PASS/);
  }, 120_000);

  it('kumo-vhost-user-blk: DISCARD, WRITE_ZEROES (with and without UNMAP) and direct=on writes off the alignment pass', async () => {
    for (const direct of ['off', 'on']) {
      const { sock, args } = blkImage('/var/tmp/kumo-thread-limit-', 1 << 20);
      args[args.length - 1] += `,direct=${direct}`;
      const img = /path=([^,]+)/.exec(args[args.length - 1])![1];
      writeFileSync(img, Buffer.alloc(1 << 20, 0xaa));
      await startAtLimit(args, sock);
      const c = await BlkVuClient.connect(sock);
      cleanups.push(() => c.close());
      const data = c.buf(4096 + 512);
      c.mem.fill(data, 4096 + 512, 0x5c);
      const st = [
        c.add(0, VIRTIO_BLK_T_DISCARD, 0, [c.ranges([{ sector: 0, numSectors: 8, flags: 0 }])], [], 0),
        c.add(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, [c.ranges([{ sector: 8, numSectors: 8, flags: 0 }])], [], 1),
        c.add(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, [c.ranges([{ sector: 16, numSectors: 8, flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP }])], [], 2),
        // A buffer off the 512-byte alignment: direct=on takes it through the pooled buffer.
        c.add(0, VIRTIO_BLK_T_OUT, 64, [{ addr: data + 1, len: 4096 }], [], 3),
        c.add(0, VIRTIO_BLK_T_FLUSH, 0, [], [], 4),
      ];
      c.run(0, st.length);
      expect(st.map((a) => c.mem.readU8(a)), `direct=${direct}`).toEqual(st.map(() => VIRTIO_BLK_S_OK));
      const disk = readFileSync(img);
      expect(disk.subarray(4096, 3 * 4096).every((b) => b === 0), `direct=${direct}: zeroed`).toBe(true);
      expect(disk.subarray(64 * 512, 64 * 512 + 4096).every((b) => b === 0x5c), `direct=${direct}: written`).toBe(true);
      expect(disk[3 * 4096]).toBe(0xaa);
      for (const f of cleanups.splice(0).reverse()) f();
    }
  }, 120_000);

  it('kumo-virtiofsd: FSYNC and fdatasync pass', async () => {
    const dir = mkdtempSync('/var/tmp/kumo-thread-limit-');
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const share = join(dir, 'share');
    mkdirSync(share);
    const sock = join(dir, 'fs.sock');
    await startAtLimit([join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=chroot'], sock);
    const out = kumoVu(['fs', '--socket', sock, 'run', '-'], 'write /f.txt hello\nfsync /f.txt\nfsync /f.txt data\ncat /f.txt\n');
    expect(out).not.toMatch(/ECANCELED/);
    expect(out.match(/^ok/gm)?.length ?? 0, out).toBeGreaterThanOrEqual(3);
    expect(readFileSync(join(share, 'f.txt'), 'utf8')).toBe('hello');
  }, 120_000);
});

/** Runs a back-end under a filter failing syscalls `nrs` with `errno`; its exit code and output. */
function underFilter(errno: number, nrs: (number | string)[], args: string[]): { code: number | null; out: string } {
  const r = spawnSync('python3', [DENY, String(errno), nrs.join(','), '--', process.execPath, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'warn' } });
  return { code: r.status, out: r.stdout + r.stderr };
}

describe.skipIf(noPython)('back-ends under a seccomp profile that refuses what they need', () => {
  const EPERM = 1;
  const ENOSYS = 38;
  let dir = '';
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const fresh = (): { img: string; share: string } => {
    dir = mkdtempSync('/tmp/kumo-restricted-');
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(1 << 20));
    mkdirSync(join(dir, 'share'));
    return { img, share: join(dir, 'share') };
  };

  it('kumo-vhost-user-blk without io_uring (Docker\'s default profile) says so in one line', () => {
    const { img } = fresh();
    for (const errno of [EPERM, ENOSYS]) {
      const r = underFilter(errno, [425, 426, 427], [join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${join(dir, 'b.sock')}`]);
      expect(r.code, r.out).toBe(1);
      expect(r.out).toMatch(/^kumo-vhost-user-blk: requests are served through io_uring: io_uring_setup was refused \(E(PERM|NOSYS)\).*allow io_uring_setup/m);
      expect(r.out).not.toMatch(/\n\s+at /);
    }
  });

  it('kumo-virtiofsd where unshare is refused says so in one line, in every sandbox mode', () => {
    const { share } = fresh();
    for (const sandbox of ['namespace', 'chroot', 'none']) {
      const r = underFilter(EPERM, [272, 308], [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${join(dir, 'f.sock')}`, `--shared-dir=${share}`, `--sandbox=${sandbox}`]);
      expect(r.code, r.out).toBe(1);
      expect(r.out).toMatch(/^kumo-virtiofsd: unshare\(CLONE_FS\) was refused \(EPERM\)/m);
      expect(r.out).not.toMatch(/\n\s+at /);
    }
  });

  it('kumo-vhost-user-blk on a file system that refuses locks names the image and the cause', () => {
    const { img } = fresh();
    const r = underFilter(37 /* ENOLCK */, ['72@1=37' /* fcntl(F_OFD_SETLK) */], [join(ROOT, 'bin/kumo-vhost-user-blk.js'), '--block-backend', `path=${img},socket=${join(dir, 'b.sock')}`]);
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(new RegExp(`^kumo-vhost-user-blk: cannot lock image ${img}: its file system refuses locks \\(ENOLCK\\)`, 'm'));
  });

  it('kumo-virtiofsd without openat2 refuses to start instead of failing every guest request', () => {
    const { share } = fresh();
    const r = underFilter(ENOSYS, [437], [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${join(dir, 'f.sock')}`, `--shared-dir=${share}`, '--sandbox=chroot']);
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(/^kumo-virtiofsd: openat2 is unavailable \(ENOSYS\)/m);
  });
});

describe.skipIf(spawnSync('prlimit', ['--version']).error !== undefined)('kumo-vhost-user-blk at its fd limit', () => {
  // accept4 failing (EMFILE) ended the daemon and removed its socket: no front-end could come back later.
  it('listens on after a failed accept and serves the next front-end once fds are free', async () => {
    const { sock, args } = blkImage('/tmp/kumo-restricted-', 1 << 20);
    const child = spawn(process.execPath, args, { stdio: 'ignore' });
    cleanups.push(() => child.kill('SIGKILL'));
    await waitFor(sock);
    const pid = String(child.pid);
    const hard = spawnSync('prlimit', ['--pid', pid, '--nofile', '-o', 'HARD', '--noheadings'], { encoding: 'utf8' }).stdout.trim();
    // The lowest free fd number as the limit: no slot left for accept4 (EMFILE).
    const used = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
    let free = 0;
    while (used.has(free)) free++;
    expect(spawnSync('prlimit', ['--pid', pid, `--nofile=${free}:${hard}`]).status).toBe(0);
    kumoVu(['blk', '--socket', sock, '--connect-timeout', '3000', 'verify']);
    await new Promise((r) => setTimeout(r, 300));
    expect(spawnSync('prlimit', ['--pid', pid, `--nofile=4096:${hard}`]).status).toBe(0);
    await new Promise((r) => setTimeout(r, 800));
    expect(child.exitCode).toBe(null);
    const out = kumoVu(['blk', '--socket', sock, 'verify']);
    expect(out, out).toMatch(/RESULT: PASS/);
  }, 60_000);
});

// Linux 5.6-5.17 refuse io_uring_setup flags they do not know (SUBMIT_ALL: 5.18, COOP_TASKRUN: 5.19) with EINVAL;
// blk kept SUBMIT_ALL in its only retry and could not start there (Ubuntu 22.04's 5.15, for one).
describe.skipIf(spawnSync('strace', ['-V']).error !== undefined)('kumo-vhost-user-blk on a kernel before 5.18', () => {
  it('serves when io_uring_setup refuses its newer flags (EINVAL injected)', async () => {
    const { sock, args } = blkImage('/tmp/kumo-restricted-', 1 << 20);
    const child = spawn('strace', ['-f', '-qq', '-o', '/dev/null', '-e', 'trace=io_uring_setup', '-e', 'inject=io_uring_setup:error=EINVAL:when=1..2',
      process.execPath, ...args], { stdio: 'ignore', detached: true });
    // The whole group: a killed strace lets its tracee run on.
    cleanups.push(() => process.kill(-(child.pid as number), 'SIGKILL'));
    await waitFor(sock);
    const out = kumoVu(['blk', '--socket', sock, 'verify']);
    expect(out, out).toMatch(/RESULT: PASS/);
  }, 60_000);
});

describe('kumo-virtiofsd under limits it cannot change, said as such', () => {
  let dir = '';
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const daemon = (wrap: string[]): { code: number | null; out: string } => {
    dir = mkdtempSync('/tmp/kumo-restricted-');
    mkdirSync(join(dir, 'share'));
    const r = spawnSync(wrap[0], [...wrap.slice(1), process.execPath, join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${join(dir, 'f.sock')}`,
      `--shared-dir=${join(dir, 'share')}`, '--sandbox=chroot'], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'warn' } });
    return { code: r.status, out: r.stdout + r.stderr };
  };

  // It blamed --rlimit-nofile, which nobody passed and which cannot raise a hard limit anyway.
  it.skipIf(spawnSync('prlimit', ['--version']).error !== undefined)('a hard fd limit too low: names the hard limit and how to raise it', () => {
    const r = daemon(['prlimit', '--nofile=200', '--']);
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(/^kumo-virtiofsd: the fd limit is 200 and cannot be raised \(hard limit: ulimit -Hn/m);
    expect(r.out).not.toMatch(/--rlimit-nofile/);
  });

  // Running as root already, it was told to run as root.
  it.skipIf(process.getuid?.() !== 0 || spawnSync('setpriv', ['--version']).error !== undefined)('root without CAP_SYS_CHROOT: names the capability, in one line', () => {
    const r = daemon(['setpriv', '--bounding-set=-sys_admin,-sys_chroot', '--inh-caps=-sys_admin,-sys_chroot', '--']);
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(/^kumo-virtiofsd: --sandbox=chroot needs .*it runs as root without them .*add CAP_SYS_CHROOT/m);
    expect(r.out).not.toMatch(/\n\s+at /);
  });
});
