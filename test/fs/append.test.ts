import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Fattr, FUSE_ROOT_ID, Init } from '../../protocol/fuse/index.js';
import { FUSE_WRITE_CACHE } from '../../protocol/fuse/opcodes.js';
import { errCode } from './daemons.js';
import { LocalShare } from './local-transport.js';

const O_WRONLY = 1;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_APPEND = 0o2000;
const BASE = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.ATOMIC_O_TRUNC | Init.INIT_EXT;
const bytes = (s: string): Uint8Array => Buffer.from(s);

const shares: LocalShare[] = [];
afterEach(() => {
  for (const s of shares.splice(0)) s.close();
});

async function share(writeback: boolean, initFlags = BASE): Promise<LocalShare> {
  const s = new LocalShare('kumo-fs-append-', { writeback });
  shares.push(s);
  await s.client.init(initFlags);
  return s;
}

/** The open flags of the daemon's host fd behind handle fh (fdinfo of this process: the share runs in-process). */
function hostFlags(s: LocalShare, fh: number): number {
  const fd = s.fs.handles.get(fh).fd;
  const m = /flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return parseInt(m?.[1] ?? '-1', 8);
}

describe('O_APPEND (as Rust virtiofsd: never on the host fd, WRITE appends when the guest file asks)', () => {
  it('a page the guest writes back, or a write after it cleared O_APPEND, lands at its offset; COPY_FILE_RANGE works', async () => {
    const s = await share(false);
    const c = s.client;
    const f = join(s.dir, 'f');
    writeFileSync(f, 'AAAAAAAAAA');
    const e = await c.lookup(FUSE_ROOT_ID, 'f');
    const { fh } = await c.open(e.nodeid, O_RDWR | O_APPEND); // fopen("a+")
    expect(hostFlags(s, fh) & O_APPEND).toBe(0);
    // An mmap of the file written back: FUSE_WRITE_CACHE at the page's offset (it went to the end before).
    await c.write(e.nodeid, fh, 0, bytes('xx'), FUSE_WRITE_CACHE, O_RDWR | O_APPEND);
    expect(readFileSync(f, 'utf8')).toBe('xxAAAAAAAA');
    // fcntl(F_SETFL) took O_APPEND away in the guest: the file flags the write carries say so.
    await c.write(e.nodeid, fh, 2, bytes('yy'), 0, O_RDWR);
    expect(readFileSync(f, 'utf8')).toBe('xxyyAAAAAA');
    writeFileSync(join(s.dir, 'src'), 'SSSS');
    const src = await c.lookup(FUSE_ROOT_ID, 'src');
    const sh = await c.open(src.nodeid, 0);
    expect(await c.copyFileRange(src.nodeid, sh.fh, 0, e.nodeid, fh, 6, 4)).toBe(4); // EBADF into an O_APPEND fd
    expect(readFileSync(f, 'utf8')).toBe('xxyyAASSSS');
  });

  it('a write from a file with O_APPEND goes to the end of the host file, past what another process appended', async () => {
    const s = await share(false);
    const c = s.client;
    const f = join(s.dir, 'log');
    const cr = await c.create(FUSE_ROOT_ID, 'log', O_WRONLY | O_CREAT | O_APPEND, 0o100644);
    expect(hostFlags(s, cr.fh) & O_APPEND).toBe(0);
    await c.write(cr.entry.nodeid, cr.fh, 0, bytes('one\n'), 0, O_WRONLY | O_APPEND);
    appendFileSync(f, 'two\n');
    // The guest thinks the file ends at 4; its append must not overwrite the host's line.
    await c.write(cr.entry.nodeid, cr.fh, 4, bytes('three\n'), 0, O_WRONLY | O_APPEND);
    expect(readFileSync(f, 'utf8')).toBe('one\ntwo\nthree\n');
  });

  it('with the writeback cache a write goes where the guest says even from an O_APPEND file (its kernel owns the end)', async () => {
    const s = await share(true, BASE | Init.WRITEBACK_CACHE);
    const f = join(s.dir, 'f');
    writeFileSync(f, 'B'.repeat(4096));
    const e = await s.client.lookup(FUSE_ROOT_ID, 'f');
    const { fh } = await s.client.open(e.nodeid, O_WRONLY | O_APPEND);
    // An O_APPEND|O_DIRECT write while the guest holds a dirty page at 4096 that it has not written back: the guest's
    // end of file is 8192. Appended at the host's end (4096), the page written back later went over it.
    await s.client.write(e.nodeid, fh, 8192, bytes('C'.repeat(4096)), 0, O_WRONLY | O_APPEND);
    const got = readFileSync(f);
    expect(got.length).toBe(12288);
    expect(got.subarray(8192).toString()).toBe('C'.repeat(4096));
  });

  it('an append-only host file (chattr +a) still opens for appending, and its writes append', async (ctx) => {
    if (process.getuid?.() !== 0 || spawnSync('chattr', ['-V']).error) return ctx.skip();
    const s = await share(false);
    const f = join(s.dir, 'f');
    writeFileSync(f, 'AAAA');
    if (spawnSync('chattr', ['+a', f]).status !== 0) return ctx.skip(); // a file system without the flag
    try {
      const e = await s.client.lookup(FUSE_ROOT_ID, 'f');
      const { fh } = await s.client.open(e.nodeid, O_WRONLY | O_APPEND);
      expect(hostFlags(s, fh) & O_APPEND).toBe(O_APPEND);
      await s.client.write(e.nodeid, fh, 0, bytes('BB'), 0, O_WRONLY | O_APPEND);
      expect(readFileSync(f, 'utf8')).toBe('AAAABB');
      expect(await errCode(s.client.open(e.nodeid, O_WRONLY))).toBe('EPERM');
      // The guest cleared O_APPEND with fcntl (the host refuses that on an append-only file): a write at offset 0
      // would have landed at the end, answered as written where it said.
      expect(await errCode(s.client.write(e.nodeid, fh, 0, bytes('CC'), 0, O_WRONLY))).toBe('EPERM');
      expect(readFileSync(f, 'utf8')).toBe('AAAABB');
    } finally {
      spawnSync('chattr', ['-a', f]);
    }
  });

  it('with the writeback cache an append-only host file does not open for writing (its pages would be appended again)', async (ctx) => {
    if (process.getuid?.() !== 0 || spawnSync('chattr', ['-V']).error) return ctx.skip();
    const s = await share(true, BASE | Init.WRITEBACK_CACHE);
    const f = join(s.dir, 'f');
    writeFileSync(f, 'data\n');
    if (spawnSync('chattr', ['+a', f]).status !== 0) return ctx.skip();
    try {
      const e = await s.client.lookup(FUSE_ROOT_ID, 'f');
      // `echo abc >> f` in the guest: its page cache writes the whole page back at offset 0.
      expect(await errCode(s.client.open(e.nodeid, O_WRONLY | O_APPEND))).toBe('EPERM');
      expect(readFileSync(f, 'utf8')).toBe('data\n');
    } finally {
      spawnSync('chattr', ['-a', f]);
    }
  });
});

describe('--writeback follows what INIT agreed, not what it offered', () => {
  it('without FUSE_WRITEBACK_CACHE agreed a write-only open stays write-only', async () => {
    const s = await share(true); // offered by the daemon, not asked for by this client
    writeFileSync(join(s.dir, 'f'), 'AAAA');
    const e = await s.client.lookup(FUSE_ROOT_ID, 'f');
    expect(hostFlags(s, (await s.client.open(e.nodeid, O_WRONLY)).fh) & 3).toBe(O_WRONLY);
    const wb = await share(true, BASE | Init.WRITEBACK_CACHE);
    writeFileSync(join(wb.dir, 'f'), 'AAAA');
    const e2 = await wb.client.lookup(FUSE_ROOT_ID, 'f');
    // The guest's page cache may read pages of a file it writes: the host fd reads too.
    expect(hostFlags(wb, (await wb.client.open(e2.nodeid, O_WRONLY)).fh) & 3).toBe(O_RDWR);
  });

  it('CREATE of an existing file the caller may write but not read opens it (EACCES before: the O_RDWR was checked as the caller)', async () => {
    const s = await share(true, BASE | Init.WRITEBACK_CACHE);
    chmodSync(s.dir, 0o777);
    const f = join(s.dir, 'f');
    writeFileSync(f, 'AAAA');
    chownSync(f, 1000, 1000);
    chmodSync(f, 0o200);
    s.client.caller = { uid: 1000, gid: 1000, pid: 1 };
    const cr = await s.client.create(FUSE_ROOT_ID, 'f', O_WRONLY, 0o100644);
    expect(hostFlags(s, cr.fh) & 3).toBe(O_RDWR);
    // The caller's own access is still checked: a file it may not write stays closed to it.
    chmodSync(f, 0o400);
    expect(await errCode(s.client.create(FUSE_ROOT_ID, 'f', O_WRONLY, 0o100644))).toBe('EACCES');
  });
});

describe('host leases', () => {
  it('SETATTR size without a handle answers EAGAIN (EWOULDBLOCK) at once while a host process holds a read lease', async (ctx) => {
    if (!existsSync('/usr/bin/python3')) return ctx.skip(); // takes the lease (Node has no fcntl)
    const s = await share(false);
    const f = join(s.dir, 'f');
    writeFileSync(f, 'AAAAAAAAAA');
    const e = await s.client.lookup(FUSE_ROOT_ID, 'f');
    const holder = spawn('/usr/bin/python3', ['-c', [
      'import fcntl, os, signal, sys, time',
      'signal.signal(signal.SIGIO, lambda *a: None)',
      'fd = os.open(sys.argv[1], os.O_RDONLY)',
      'fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)', // F_SETLEASE
      "print('leased', flush=True)",
      'time.sleep(10)',
    ].join('\n'), f], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise((r) => holder.stdout.once('data', r));
      const t0 = Date.now();
      // The request thread waited for the lease to be broken (lease-break-time, 45 s by default).
      expect(await errCode(s.client.setattr(e.nodeid, { valid: Fattr.SIZE, size: 0 }))).toBe('EWOULDBLOCK'); // EAGAIN
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(readFileSync(f, 'utf8')).toBe('AAAAAAAAAA');
    } finally {
      holder.kill('SIGKILL');
    }
  });
});
