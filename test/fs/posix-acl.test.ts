import { describe, it, expect, afterEach } from 'vitest';
import { chmodSync, chownSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FuseClient, FUSE_ROOT_ID, Init, FUSE_SETXATTR_ACL_KILL_SGID } from '../../protocol/fuse/index.js';
import * as sysfs from '../../protocol/sys/fs.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import type { FsOptions as FsOptionsT } from '../../backends/virtiofsd/options.js';
import { LocalShare } from './local-transport.js';

/** What a Linux guest offers at INIT (the parts that matter here). */
const KERNEL_FLAGS = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT | Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT;

// posix_acl_xattr: version 2, then { u16 tag, u16 perm, u32 id } per entry.
const TAG = { USER_OBJ: 0x01, USER: 0x02, GROUP_OBJ: 0x04, GROUP: 0x08, MASK: 0x10, OTHER: 0x20 };
function acl(entries: [number, number, number?][]): Buffer {
  const b = Buffer.alloc(4 + 8 * entries.length);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i);
    b.writeUInt16LE(perm, 6 + 8 * i);
    b.writeUInt32LE(id ?? 0xffffffff, 8 + 8 * i);
  });
  return b;
}

let share: LocalShare | null = null;
let base = '';
afterEach(() => unmount());

function unmount(): void {
  share?.close();
  share = null;
}

async function mount(posixAcl: boolean, offer = KERNEL_FLAGS): Promise<{ c: FuseClient; flags: bigint }> {
  share = new LocalShare('kumo-fs-acl-', { xattr: true, posixAcl });
  base = share.dir;
  const r = await share.client.init(offer);
  return { c: share.client, flags: BigInt(r.flags) | (BigInt(r.flags2) << 32n) };
}
const mode = (p: string): number => statSync(join(base, p)).mode & 0o7777;

describe('--posix-acl', () => {
  it('is parsed in both spellings and turns xattrs on', () => {
    for (const argv of [['--posix-acl'], ['-o', 'posix_acl']]) {
      const cfg = parseArgs(['--socket-path=/s', '--shared-dir=/d', ...argv]);
      expect(cfg.fs.posixAcl).toBe(true);
      expect(cfg.fs.xattr).toBe(true);
      expect(cfg.ignored).toEqual([]);
    }
  });

  it('takes POSIX_ACL, DONT_MASK and SETXATTR_EXT only when enabled', async () => {
    const on = await mount(true);
    expect(on.flags & (Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT)).toBe(Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT);
    unmount();
    const off = await mount(false);
    expect(off.flags & (Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT)).toBe(0n);
  });

  it("applies the guest's umask itself, except where the parent's default ACL decides the mode", async () => {
    const { c } = await mount(true);
    await c.mkdir(FUSE_ROOT_ID, 'd', 0o777, 0o022);
    expect(mode('d')).toBe(0o755);
    await c.create(FUSE_ROOT_ID, 'f', 0o1 /* O_WRONLY */, 0o666, 0o077);
    expect(mode('f')).toBe(0o600);
    await c.mknod(FUSE_ROOT_ID, 'p', 0o010666 /* FIFO */, 0, 0o027);
    expect(mode('p')).toBe(0o640);
    // A default ACL on the parent: the host ignores the umask and takes the mode from the ACL.
    const dir = (await c.mkdir(FUSE_ROOT_ID, 'inherit', 0o777, 0o022)).nodeid;
    await c.setxattr(dir, 'system.posix_acl_default', acl([[TAG.USER_OBJ, 7], [TAG.USER, 5, 1234], [TAG.GROUP_OBJ, 5], [TAG.MASK, 7], [TAG.OTHER, 5]]));
    await c.create(dir, 'g', 0o1, 0o666, 0o077);
    expect(mode('inherit/g')).toBe(0o664); // user rw, mask rw (group bits), other r: the umask 077 was not applied
    const access = Buffer.alloc(256);
    const n = sysfs.getxattr(join(base, 'inherit/g'), 'system.posix_acl_access', access);
    expect(n).toBeGreaterThan(4 + 3 * 8); // the named user entry came with it
    // A later creation without ACLs masks again (the thread's umask went back to 0 in between).
    await c.mkdir(FUSE_ROOT_ID, 'e', 0o777, 0o002);
    expect(mode('e')).toBe(0o775);
  });

  it('leaves modes to the guest without it (the guest masked them already)', async () => {
    const { c } = await mount(false);
    await c.mkdir(FUSE_ROOT_ID, 'd', 0o777, 0o022);
    expect(mode('d')).toBe(0o777);
  });

  it('sets access ACLs on the host file (mode follows) and drops set-group-ID when the guest says the caller may not keep it', async () => {
    const { c } = await mount(true);
    writeFileSync(join(base, 'f'), 'x');
    const f = (await c.lookup(FUSE_ROOT_ID, 'f')).nodeid;
    await c.setxattr(f, 'system.posix_acl_access', acl([[TAG.USER_OBJ, 6], [TAG.USER, 4, 1234], [TAG.GROUP_OBJ, 4], [TAG.MASK, 6], [TAG.OTHER, 0]]));
    expect(mode('f')).toBe(0o660);
    const got = (await c.getxattr(f, 'system.posix_acl_access', 256)) as Uint8Array;
    expect(Buffer.from(got).readUInt32LE(4 + 8 + 4)).toBe(1234);

    if (process.getuid?.() !== 0) {
      console.log('set-group-ID part skipped: giving the test file another group needs root');
      return;
    }
    mkdirSync(join(base, 'sg'));
    for (const name of ['keep', 'kill']) {
      writeFileSync(join(base, 'sg', name), '');
      chownSync(join(base, 'sg', name), 0, 4321);
      chmodSync(join(base, 'sg', name), 0o2770);
    }
    const sg = (await c.lookup(FUSE_ROOT_ID, 'sg')).nodeid;
    const rwx = acl([[TAG.USER_OBJ, 7], [TAG.GROUP_OBJ, 7], [TAG.OTHER, 0]]);
    await c.setxattr((await c.lookup(sg, 'keep')).nodeid, 'system.posix_acl_access', rwx);
    await c.setxattr((await c.lookup(sg, 'kill')).nodeid, 'system.posix_acl_access', rwx, 0, FUSE_SETXATTR_ACL_KILL_SGID);
    expect(mode('sg/keep')).toBe(0o2770);
    expect(mode('sg/kill')).toBe(0o770);
  });

  it('refuses INIT from a guest that does not offer FUSE_POSIX_ACL (as virtiofsd), instead of running on without ACLs', async () => {
    await expect(mount(true, KERNEL_FLAGS & ~Init.POSIX_ACL)).rejects.toThrow(/EPROTO/);
    unmount();
    // Linux 4.9-5.15 offers ACLs without SETXATTR_EXT: it could not say that a caller setting an ACL loses set-group-ID.
    await expect(mount(true, KERNEL_FLAGS & ~Init.SETXATTR_EXT)).rejects.toThrow(/EPROTO/);
  });

  it('--posix-acl=auto (newer virtiofsd) serves a guest without the ACL flags, ACLs off; =always and =never as their names say', async () => {
    const parse = (flag: string): FsOptionsT => parseArgs(['--socket-path=/s', '--shared-dir=/d', flag]).fs;
    expect(parse('--posix-acl=always')).toMatchObject({ posixAcl: true, posixAclAuto: false, xattr: true });
    expect(parse('--posix-acl=auto')).toMatchObject({ posixAcl: true, posixAclAuto: true, xattr: true });
    expect(parse('--posix-acl=never')).toMatchObject({ posixAcl: false });
    expect(() => parse('--posix-acl=yes')).toThrow(/must be one of never\|auto\|always/);
    expect(() => parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'posix_acl=always'])).toThrow(/takes no value/);
    share = new LocalShare('kumo-fs-acl-', { xattr: true, posixAcl: true, posixAclAuto: true });
    base = share.dir;
    const r = await share.client.init(KERNEL_FLAGS & ~Init.POSIX_ACL);
    expect(BigInt(r.flags) & Init.POSIX_ACL).toBe(0n);
    expect((await share.client.getattr(FUSE_ROOT_ID)).mode & 0o170000).toBe(0o040000);
    unmount();
    share = new LocalShare('kumo-fs-acl-', { xattr: true, posixAcl: true, posixAclAuto: true });
    base = share.dir;
    const on = await share.client.init(KERNEL_FLAGS);
    expect(BigInt(on.flags) & Init.POSIX_ACL).toBe(Init.POSIX_ACL);
  });

  it('without ACLs agreed, refuses and hides the ACL xattrs: no host ACL the guest can neither see nor enforce', async () => {
    const { c } = await mount(false);
    writeFileSync(join(base, 'f'), 'x');
    chmodSync(join(base, 'f'), 0o644);
    const f = (await c.lookup(FUSE_ROOT_ID, 'f')).nodeid;
    const rw = acl([[TAG.USER_OBJ, 6], [TAG.USER, 7, 1234], [TAG.GROUP_OBJ, 4], [TAG.MASK, 7], [TAG.OTHER, 0]]);
    for (const name of ['system.posix_acl_access', 'system.posix_acl_default']) {
      await expect(c.setxattr(f, name, rw)).rejects.toThrow(/EOPNOTSUPP/);
      await expect(c.getxattr(f, name, 256)).rejects.toThrow(/EOPNOTSUPP/);
      await expect(c.removexattr(f, name)).rejects.toThrow(/EOPNOTSUPP/);
    }
    expect(mode('f')).toBe(0o644);
    // One set on the host is not listed, and the list's size leaves it out too.
    sysfs.setxattr(join(base, 'f'), Buffer.from('system.posix_acl_access'), rw, 0);
    await c.setxattr(f, 'user.k', Buffer.from('v'));
    expect(Buffer.from((await c.listxattr(f, 4096)) as Uint8Array).toString()).toBe('user.k\0');
    expect(await c.listxattr(f, 0)).toBe('user.k\0'.length);
  });

  it('without ACLs agreed, a creation whose security label names an ACL xattr is refused and leaves nothing', async () => {
    share = new LocalShare('kumo-fs-acl-', { xattr: true, securityLabel: true, posixAcl: false });
    base = share.dir;
    const c = share.client;
    await c.init(KERNEL_FLAGS | Init.SECURITY_CTX);
    c.securityContext = { name: new TextEncoder().encode('system.posix_acl_default'), value: acl([[TAG.USER_OBJ, 7], [TAG.USER, 7, 4242], [TAG.GROUP_OBJ, 5], [TAG.MASK, 7], [TAG.OTHER, 5]]) };
    await expect(c.mkdir(FUSE_ROOT_ID, 'labelled', 0o755)).rejects.toThrow(/EOPNOTSUPP/);
    await expect(c.create(FUSE_ROOT_ID, 'file', 0o102, 0o100644)).rejects.toThrow(/EOPNOTSUPP/);
    expect(existsSync(join(base, 'labelled')) || existsSync(join(base, 'file'))).toBe(false);
  });

  it('a re-INIT refused for want of ACL flags leaves no session behind (the old one does not go on serving)', async () => {
    const { c } = await mount(true);
    writeFileSync(join(base, 'f'), 'x');
    await expect(c.init(KERNEL_FLAGS & ~Init.POSIX_ACL)).rejects.toThrow(/EPROTO/);
    await expect(c.lookup(FUSE_ROOT_ID, 'f')).rejects.toThrow(/EIO/);
  });
});
