import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Fattr, FuseClient, FuseReplyError, FUSE_ROOT_ID, Init } from '../../protocol/fuse/index.js';
import * as sysfs from '../../protocol/sys/fs.js';
import { PassthroughFs } from '../../backends/virtiofsd/passthrough.js';
import { FuseServer } from '../../backends/virtiofsd/server.js';
import { defaultFsOptions } from '../../backends/virtiofsd/options.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { parseXattrMap, XattrMap } from '../../backends/virtiofsd/xattrmap.js';
import { FsConfigError, FsError } from '../../backends/virtiofsd/errors.js';
import { LocalShare, LocalTransport } from './local-transport.js';
import { errCode } from './daemons.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const QEMU_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const SCRIPT = fileURLToPath(new URL('./xattrmap.fs.txt', import.meta.url));
const b = (s: string): Buffer => Buffer.from(s);

function errno(f: () => unknown): number | 'ok' {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof FsError) return e.errno;
    throw e;
  }
}

describe('--xattrmap rules', () => {
  it('parses rules with any separator and white space between them, ending in the catch-all bad rule', () => {
    const r = parseXattrMap(' /prefix/all/trusted./user.virtiofs./\n  /bad/server//trusted./ :ok:client:user.:: ');
    expect(r).toEqual([
      { type: 'prefix', client: true, server: true, key: 'trusted.', prepend: 'user.virtiofs.' },
      { type: 'bad', client: false, server: true, key: '', prepend: 'trusted.' },
      { type: 'ok', client: true, server: false, key: 'user.', prepend: '' },
      { type: 'bad', client: true, server: true, key: '', prepend: '' },
    ]);
  });

  it("expands 'map' as virtiofsd documents it", () => {
    expect(parseXattrMap(':map::user.virtiofs.:')).toEqual(parseXattrMap(':prefix:all::user.virtiofs.::bad:all:::'));
    expect(parseXattrMap('/map/trusted./user.virtiofs./')).toEqual(
      parseXattrMap('/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /bad/client/user.virtiofs.// /ok/all///'));
  });

  it('rejects malformed mappings with a clear error', () => {
    for (const [spec, msg] of [
      ['', /no rules/], ['   ', /no rules/], [':bogus:all:::', /unknown rule type 'bogus'/],
      [':ok:both:::', /unknown scope 'both'/], [':prefix:all:a', /no key field/], [':ok:all::', /no prepend field/],
      [':map::x.: :ok:all:::', /must be the last rule/],
    ] as const) {
      expect(() => parseXattrMap(spec), spec).toThrow(FsConfigError);
      expect(() => parseXattrMap(spec), spec).toThrow(msg);
    }
  });

  it('maps client names, refuses bad and unsupported ones, and filters server lists', () => {
    const m = new XattrMap(parseXattrMap('/unsupported/all/security.selinux/security.selinux/ /map/trusted./user.virtiofs./'));
    expect(Buffer.from(m.toServer(b('trusted.a'), 'set')).toString()).toBe('user.virtiofs.trusted.a');
    expect(Buffer.from(m.toServer(b('user.x'), 'set')).toString()).toBe('user.x');
    expect(errno(() => m.toServer(b('user.virtiofs.trusted.a'), 'set'))).toBe(1); // EPERM
    expect(errno(() => m.toServer(b('user.virtiofs.trusted.a'), 'get'))).toBe(61); // ENODATA
    expect(errno(() => m.toServer(b('security.selinux'), 'get'))).toBe(95); // EOPNOTSUPP
    expect(errno(() => m.toServer(b('security.selinux'), 'set'))).toBe(95);
    const host = b('user.virtiofs.trusted.a\0trusted.host\0user.x\0security.selinux\0user.virtiofs.\0');
    expect(m.mapList(host).toString().split('\0')).toEqual(['trusted.a', 'user.x', '']);
    // Without a catch-all rule, what no rule matches is refused and hidden.
    const strict = new XattrMap(parseXattrMap(':ok:all:user.:user.:'));
    expect(errno(() => strict.toServer(b('trusted.a'), 'set'))).toBe(1);
    expect(strict.mapList(b('trusted.a\0user.b\0')).toString()).toBe('user.b\0');
  });

  it('comes from --xattrmap or -o xattrmap= and turns xattrs on', () => {
    const a = parseArgs(['--socket-path=/s', '--shared-dir=/d', '--xattrmap=:map::user.virtiofs.:']);
    const q = parseArgs(['--socket-path', '/s', '-o', 'source=/d,xattrmap=:map::user.virtiofs.:']);
    expect(a.fs.xattr).toBe(true);
    expect(a.fs.xattrmap).toEqual(parseXattrMap(':map::user.virtiofs.:'));
    expect(q.fs).toEqual(a.fs);
    expect(() => parseArgs(['--socket-path=/s', '--shared-dir=/d', '--xattrmap=:nope:::'])).toThrow(/unknown rule type/);
  });
});

describe('--xattrmap on the passthrough filesystem', () => {
  let base: string;
  let fs: PassthroughFs;
  let c: FuseClient;
  beforeEach(async () => {
    base = mkdtempSync('/tmp/kumo-fs-xmap-');
    writeFileSync(join(base, 'f'), 'x');
    sysfs.setxattr(join(base, 'f'), 'user.virtiofs.user.a', b('A'), 0);
    sysfs.setxattr(join(base, 'f'), 'user.host', b('hidden'), 0);
    fs = new PassthroughFs({ ...defaultFsOptions(base), xattr: true, xattrmap: parseXattrMap(':map::user.virtiofs.:') });
    c = new FuseClient(new LocalTransport(new FuseServer(fs)));
    await c.init();
  });
  afterEach(() => {
    fs.close();
    rmSync(base, { recursive: true, force: true });
  });

  it('sizes and lists the mapped names, not the host ones, and answers ERANGE for a short buffer', async () => {
    const f = (await c.lookup(FUSE_ROOT_ID, 'f')).nodeid;
    expect(await c.listxattr(f, 0)).toBe('user.a\0'.length);
    expect(Buffer.from((await c.listxattr(f, 64)) as Uint8Array).toString()).toBe('user.a\0');
    await expect(c.listxattr(f, 3)).rejects.toThrow(FuseReplyError);
    await expect(c.listxattr(f, 3)).rejects.toMatchObject({ code: 'ERANGE' });
    await c.setxattr(f, 'user.b', b('B'));
    expect(sysfs.listxattr(join(base, 'f'), null)).toBeGreaterThan(0);
    const hostNames = Buffer.alloc(256);
    const n = sysfs.listxattr(join(base, 'f'), hostNames);
    expect(hostNames.subarray(0, n).toString().split('\0').filter(Boolean).sort()).toEqual(['user.host', 'user.virtiofs.user.a', 'user.virtiofs.user.b']);
    expect(Buffer.from((await c.getxattr(f, 'user.a', 16)) as Uint8Array).toString()).toBe('A');
    await c.removexattr(f, 'user.a');
    expect(Buffer.from((await c.listxattr(f, 64)) as Uint8Array).toString()).toBe('user.b\0');
  });
});

/** Host-side xattr names of every entry in the share (what the mapping left on disk). */
function hostXattrs(share: string): string {
  const buf = Buffer.alloc(65536);
  return readdirSync(share).sort().map((name) => {
    const n = sysfs.listxattr(join(share, name), buf);
    return `${name}: ${buf.subarray(0, n).toString().split('\0').filter(Boolean).sort().join(' ')}`;
  }).join('\n');
}

async function runDaemon(kind: 'kumo' | 'qemu', dir: string, map: string): Promise<{ out: string; host: string }> {
  const share = join(dir, `${kind}-share`);
  mkdirSync(share);
  writeFileSync(join(share, 'f'), '');
  // An attribute the host set itself: the rules decide whether the guest sees it.
  sysfs.setxattr(join(share, 'f'), 'trusted.host', b('h'), 0);
  const sock = join(dir, `${kind}.sock`);
  const d = kind === 'kumo'
    ? spawn(process.execPath, [join(ROOT, 'bin/kumo-virtiofsd.js'), `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=chroot', `--xattrmap=${map}`],
      { stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn' } })
    : spawn(QEMU_VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${share}`, '-o', 'sandbox=chroot', '-o', `xattrmap=${map}`], { stdio: 'ignore' });
  try {
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/kumo-vu.js'), 'fs', '--socket', sock, '--connect-timeout', '15000', 'run', SCRIPT],
      { encoding: 'utf8', timeout: 60_000 });
    return { out: r.stdout, host: hostXattrs(share) };
  } finally {
    d.kill('SIGKILL');
  }
}

const root = process.getuid?.() === 0;
if (!existsSync(QEMU_VIRTIOFSD)) console.log(`xattrmap comparison skipped: ${QEMU_VIRTIOFSD} is not installed`);
else if (!root) console.log('xattrmap comparison skipped: QEMU virtiofsd and trusted.* xattrs need root');

describe('--xattrmap: kumo-virtiofsd vs QEMU virtiofsd over vhost-user', () => {
  for (const map of [
    '/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /bad/client/user.virtiofs.// /ok/all///',
    '/unsupported/all/security.selinux/security.selinux/ /map/trusted./user.virtiofs./',
    ':map::user.virtiofs.:',
  ]) {
    it.skipIf(!existsSync(QEMU_VIRTIOFSD) || !root)(`gives the same replies and host names with ${map}`, async () => {
      const dir = mkdtempSync('/tmp/kumo-fs-xmapcmp-');
      try {
        const q = await runDaemon('qemu', dir, map);
        const k = await runDaemon('kumo', dir, map);
        expect(k.out.split('\n').filter((l) => l.startsWith('> ')).length).toBeGreaterThanOrEqual(20);
        expect(k.out).toBe(q.out);
        expect(k.host).toBe(q.host);
        expect(k.out).toContain('> getxattr f trusted.a\nok len=3 "one"');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 60_000);
  }
});

describe('--xattrmap moving security.capability', () => {
  // The host kernel drops security.capability on write, truncate, chown and O_TRUNC; renamed by a map it is an
  // ordinary xattr to the host, and a rewritten binary kept its file capabilities in the guest.
  it('drops it where the host kernel would drop the real one', async () => {
    const cap = Buffer.alloc(20);
    cap.writeUInt32LE(0x02000001, 0); // vfs_cap_data v2, effective
    cap.writeUInt32LE(1 << 13, 4); // CAP_NET_RAW permitted
    const s = new LocalShare('kumo-fs-secap-', { xattr: true, killPrivV2: true, cache: 'never', xattrmap: parseXattrMap(':map::user.virtiofs.:') });
    try {
      const c = s.client;
      await c.init(Init.ASYNC_READ | Init.BIG_WRITES | Init.ATOMIC_O_TRUNC | Init.HANDLE_KILLPRIV_V2 | Init.INIT_EXT);
      const ops: [string, (n: number, fh: number) => Promise<unknown>][] = [
        ['write', (n, fh) => c.write(n, fh, 0, Buffer.from('x'))],
        ['truncate', (n) => c.setattr(n, { valid: Fattr.SIZE, size: 0 })],
        ['chown', (n) => c.setattr(n, { valid: Fattr.UID, uid: 0 })],
        ['open-trunc', (n) => c.open(n, 2 | 0o1000)],
        ['read', (n, fh) => c.read(n, fh, 0, 16)], // not a modification: the capability stays
      ];
      const left: Record<string, string> = {};
      for (const [what, op] of ops) {
        const cr = await c.create(FUSE_ROOT_ID, what, 2 | 0o100, 0o100755);
        await c.write(cr.entry.nodeid, cr.fh, 0, Buffer.from('#!/bin/true\n'));
        await c.setxattr(cr.entry.nodeid, 'security.capability', cap);
        expect(sysfs.getxattr(join(s.dir, what), 'user.virtiofs.security.capability', Buffer.alloc(64))).toBe(20);
        await op(cr.entry.nodeid, cr.fh);
        left[what] = await errCode(c.getxattr(cr.entry.nodeid, 'security.capability', 0));
      }
      expect(left).toEqual({ write: 'ENODATA', truncate: 'ENODATA', chown: 'ENODATA', 'open-trunc': 'ENODATA', read: 'ok' });
    } finally {
      s.close();
    }
  });
});
