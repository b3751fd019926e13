import { describe, it, expect, afterEach } from 'vitest';
import { chmodSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { connectFs } from './daemons.js';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Fattr, FuseClient, FuseReplyError, FUSE_ROOT_ID } from '../../protocol/fuse/index.js';
import { PassthroughFs } from '../../backends/virtiofsd/passthrough.js';
import { FuseServer } from '../../backends/virtiofsd/server.js';
import { InodeHandles } from '../../backends/virtiofsd/inode-handles.js';
import { defaultFsOptions, type FileHandleMode } from '../../backends/virtiofsd/options.js';
import { FsError } from '../../backends/virtiofsd/errors.js';
import { openat, AT_FDCWD } from '../../protocol/sys/fs.js';
import { close } from '../../protocol/sys/fd.js';
import { ScriptRunner } from '../../vmm/kumo-vu/fs/script.js';
import { LocalTransport } from './local-transport.js';
import { leaseHolder } from './lease-holder.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SCRIPT = readFileSync(new URL('./script.fs.txt', import.meta.url), 'utf8');
const O_PATH_DIR = 0o10000000 | 0o200000;
const dirs: string[] = [];
const open: PassthroughFs[] = [];

function share(): string {
  const d = mkdtempSync('/tmp/kumo-fh-');
  dirs.push(d);
  return d;
}

async function mount(dir: string, mode: FileHandleMode, openInodeFds = 2): Promise<{ fs: PassthroughFs; c: FuseClient }> {
  const fs = new PassthroughFs({ ...defaultFsOptions(dir), xattr: true, posixLock: true, inodeFileHandles: mode, openInodeFds });
  open.push(fs);
  const c = new FuseClient(new LocalTransport(new FuseServer(fs)));
  await c.init();
  return { fs, c };
}

/** A share with fb: a file from another directory (`outside`/file, "bound") bind-mounted onto it. */
function bindMountedFile(): { dir: string; outside: string } {
  const dir = share();
  const outside = share();
  writeFileSync(join(outside, 'file'), 'bound');
  writeFileSync(join(dir, 'fb'), '');
  const m = spawnSync('mount', ['--bind', join(outside, 'file'), join(dir, 'fb')], { encoding: 'utf8' });
  if (m.status !== 0) throw new Error(`mount --bind: ${m.stderr}`);
  return { dir, outside };
}

const tree = (dir: string): string =>
  spawnSync('sh', ['-c', `cd ${dir} && find . -printf '%p %y %m %s %l\\n' | sort`], { encoding: 'utf8' }).stdout;

afterEach(() => {
  for (const fs of open.splice(0)) fs.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('--inode-file-handles', () => {
  it('runs the whole comparison script the same way with handles and a 2-fd inode cache', async () => {
    const plainDir = share();
    const handleDir = share();
    const plain = await mount(plainDir, 'never');
    const handles = await mount(handleDir, 'mandatory', 2);
    expect(plain.fs.fileHandles).toBeNull();
    const run = async (c: FuseClient): Promise<string[]> => {
      const out: string[] = [];
      await new ScriptRunner(c).runScript(SCRIPT, (s) => out.push(s));
      return out;
    };
    const a = await run(plain.c);
    const b = await run(handles.c);
    expect(b.length).toBeGreaterThan(120);
    expect(b).toEqual(a);
    expect(tree(handleDir)).toBe(tree(plainDir));
    expect(handles.fs.fileHandles?.openCount).toBeLessThanOrEqual(2);
  });

  it('lets a non-root caller create in, and ACCESS, inodes whose fds were evicted (reopened before switching to it)', async () => {
    if (process.getuid?.() !== 0) return console.log('not root: file handles need CAP_DAC_READ_SEARCH');
    const base = share();
    const dir = join(base, 'share');
    mkdirSync(dir, { mode: 0o777 });
    chmodSync(dir, 0o777);
    mkdirSync(join(dir, 'd'));
    chmodSync(join(dir, 'd'), 0o777);
    writeFileSync(join(dir, 'r'), 'readable', { mode: 0o644 });
    for (let k = 0; k < 4; k++) writeFileSync(join(dir, `o${k}`), '');
    const cleanups: (() => void)[] = [];
    mkdirSync(join(base, 'run'));
    try {
      const c = await connectFs({ who: 'kumo', kumoArgs: ['--inode-file-handles=mandatory'], env: { KUMO_FS_OPEN_INODE_FDS: '2' } }, join(base, 'run'), dir, cleanups);
      await c.init();
      const d = await c.lookup(FUSE_ROOT_ID, 'd');
      const r = await c.lookup(FUSE_ROOT_ID, 'r');
      const evict = async (): Promise<void> => {
        c.caller = { uid: 0, gid: 0, pid: 1 };
        for (let k = 0; k < 4; k++) await c.lookup(FUSE_ROOT_ID, `o${k}`);
        c.caller = { uid: 1000, gid: 1000, pid: 1 };
      };
      const made: string[] = [];
      for (const [name, f] of [
        ['mkdir', () => c.mkdir(d.nodeid, 'x', 0o755)], ['mknod', () => c.mknod(d.nodeid, 'p', 0o010644)],
        ['symlink', () => c.symlink(d.nodeid, 's', 't')], ['create', () => c.create(d.nodeid, 'f', 0o102, 0o100644)],
        ['access', () => c.access(r.nodeid, 4)],
      ] as const) {
        await evict();
        made.push(`${name}: ${await (f as () => Promise<unknown>)().then(() => 'ok', (e: FuseReplyError) => e.code)}`);
      }
      expect(made).toEqual(['mkdir: ok', 'mknod: ok', 'symlink: ok', 'create: ok', 'access: ok']);
      expect(statSync(join(dir, 'd', 'x')).uid).toBe(1000);
    } finally {
      for (const f of cleanups) f();
    }
  });

  it('keeps few fds open, reopens evicted inodes by handle, and answers ESTALE for one deleted meanwhile', async () => {
    const dir = share();
    mkdirSync(join(dir, 'd'));
    for (let k = 0; k < 40; k++) writeFileSync(join(dir, 'd', `f${k}`), `data ${k}`);
    const { fs, c } = await mount(dir, 'prefer', 4);
    const fdsBefore = readdirSync('/proc/self/fd').length;
    const d = await c.lookup(FUSE_ROOT_ID, 'd');
    const nodes = [];
    for (let k = 0; k < 40; k++) nodes.push((await c.lookup(d.nodeid, `f${k}`)).nodeid);
    expect(fs.fileHandles?.openCount).toBeLessThanOrEqual(4);
    expect(readdirSync('/proc/self/fd').length - fdsBefore).toBeLessThanOrEqual(4);
    expect(fs.inodes.get(nodes[0]).isOpen).toBe(false);
    for (let k = 0; k < 40; k += 7) {
      const { fh } = await c.open(nodes[k], 0);
      expect(Buffer.from(await c.read(nodes[k], fh, 0, 100)).toString()).toBe(`data ${k}`);
      await c.release(nodes[k], fh);
    }
    // The same name looked up again is the same inode (same nodeid), even with its fd closed.
    expect(fs.inodes.get(nodes[1]).isOpen).toBe(false);
    expect((await c.lookup(d.nodeid, 'f1')).nodeid).toBe(nodes[1]);
    // Deleted on the host while only its handle was held: the handle is stale, not some other file.
    expect(fs.inodes.get(nodes[2]).isOpen).toBe(false);
    unlinkSync(join(dir, 'd', 'f2'));
    const err = await c.getattr(nodes[2]).then(() => 'ok', (e: FuseReplyError) => e.code);
    expect(err).toBe('ESTALE');
    expect((await c.getattr(nodes[3])).size).toBe(6);
  });

  it('keeps open the fd of a file removed while the guest still knows it, so its times can still be set (tar, then syncfs)', async () => {
    const dir = share();
    for (let k = 0; k < 20; k++) writeFileSync(join(dir, `f${k}`), `data ${k}`);
    const { fs, c } = await mount(dir, 'mandatory', 4);
    const nodes = [];
    for (let k = 10; k < 20; k++) await c.lookup(FUSE_ROOT_ID, `f${k}`);
    // GNU tar's placeholders for symlinks: made, then unlinked while the guest still writes back their times, and
    // meanwhile the cache moves on to other files (the unlinked ones' fds went, and no handle opens them again).
    for (let k = 0; k < 4; k++) {
      nodes.push((await c.lookup(FUSE_ROOT_ID, `f${k}`)).nodeid);
      await c.unlink(FUSE_ROOT_ID, `f${k}`);
      for (let j = 10; j < 20; j++) await c.lookup(FUSE_ROOT_ID, `f${j}`);
    }
    for (let k = 0; k < 4; k++) {
      const a = await c.setattr(nodes[k], { valid: Fattr.MTIME, mtime: 1_000_000, mtimensec: 0 });
      expect(a.mtime).toBe(1_000_000);
    }
    expect(fs.fileHandles?.openCount).toBeLessThanOrEqual(4);
    // Forgotten, they go (their fds too).
    for (let k = 0; k < 4; k++) await c.forget(nodes[k], 1);
    expect(fs.inodes.size).toBe(11); // the root and f10..f19
    expect(fs.fileHandles?.openCount).toBeLessThanOrEqual(4);
  });

  it('mandatory serves a regular file bind-mounted into the share (a container\'s hosts or resolv.conf)', async () => {
    if (process.getuid?.() !== 0) return console.log('not root: cannot bind-mount here');
    const { dir } = bindMountedFile();
    writeFileSync(join(dir, 'plain'), 'plain');
    try {
      const { fs, c } = await mount(dir, 'mandatory', 2);
      const e = await c.lookup(FUSE_ROOT_ID, 'fb'); // was EOPNOTSUPP: no mount fd for a mount entered through a file
      const { fh } = await c.open(e.nodeid, 0);
      expect(Buffer.from(await c.read(e.nodeid, fh, 0, 16)).toString()).toBe('bound');
      const d = await c.opendir(FUSE_ROOT_ID);
      const names = (await c.readdirplus(FUSE_ROOT_ID, d.fh, 0n, 65536)).map((x) => Buffer.from(x.dirent.name).toString());
      expect(names.sort()).toEqual(['.', '..', 'fb', 'plain']);
      fs.close();
      open.splice(open.indexOf(fs), 1);
    } finally {
      spawnSync('umount', ['-l', join(dir, 'fb')]);
    }
  });

  it('a bind-mounted file a host process holds a lease on is looked up at once (its mount fd opens O_NONBLOCK)', async () => {
    if (process.getuid?.() !== 0) return console.log('not root: cannot bind-mount here');
    const { dir, outside } = bindMountedFile();
    const kill: (() => void)[] = [];
    try {
      await leaseHolder(join(outside, 'file'), kill);
      const t0 = Date.now();
      // prefer: no handle for it (the inode keeps its O_PATH fd); mandatory: the lease's answer.
      expect((await (await mount(dir, 'prefer')).c.lookup(FUSE_ROOT_ID, 'fb')).attr.size).toBe(5);
      const err = await (await mount(dir, 'mandatory')).c.lookup(FUSE_ROOT_ID, 'fb').then(() => 'ok', (e: FuseReplyError) => e.code);
      expect(err).toBe('EWOULDBLOCK');
      expect(Date.now() - t0).toBeLessThan(2000);
    } finally {
      for (const f of kill) f();
      spawnSync('umount', ['-l', join(dir, 'fb')]);
    }
  }, 30_000);

  it('prefer falls back to fds where the filesystem has no handles; mandatory refuses it, also on the command line', () => {
    const fd = openat(AT_FDCWD, '/proc/self', O_PATH_DIR);
    const proc = openat(AT_FDCWD, '/proc/self/fd', O_PATH_DIR);
    try {
      expect(InodeHandles.probe('prefer', fd, proc, 1024)).toBeNull();
      expect(() => InodeHandles.probe('mandatory', fd, proc, 1024)).toThrow(FsError);
    } finally {
      close(fd);
      close(proc);
    }
    const r = spawnSync('node', [join(ROOT, 'bin/kumo-virtiofsd.js'), '--socket-path=/tmp/kumo-fh-never.sock', '--shared-dir=/proc/self',
      '--sandbox=none', '--inode-file-handles=mandatory'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('does not support file handles');
  });
});
