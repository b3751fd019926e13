import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeSecctx, encodeSecctx, FuseProtocolError, FuseReplyError, FUSE_ROOT_ID, Init } from '../../protocol/fuse/index.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { connectFs, QEMU_VIRTIOFSD } from './daemons.js';
import { LocalShare } from './local-transport.js';

const INIT = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.ATOMIC_O_TRUNC | Init.INIT_EXT | Init.SECURITY_CTX;
const O_RDWR = 2;
const O_CREAT = 0o100;
const enc = new TextEncoder();
const label = (name: string, value: string) => ({ name: enc.encode(name), value: enc.encode(value) });
const root = process.getuid?.() === 0;

describe('FUSE_SECURITY_CTX wire format (protocol/fuse/secctx.ts)', () => {
  it('round-trips a label and the bare header, finds an extension at the end, and refuses overruns', () => {
    const l = label('security.selinux', 'system_u:object_r:tmp_t:s0');
    const block = encodeSecctx(l);
    expect(block.length % 8).toBe(0);
    const args = new Uint8Array([...enc.encode('name\0'), ...block]);
    const got = decodeSecctx(args, 5, 0)!;
    expect(Buffer.from(got.name).toString()).toBe('security.selinux');
    expect(Buffer.from(got.value).toString()).toBe('system_u:object_r:tmp_t:s0');
    expect(decodeSecctx(new Uint8Array([...enc.encode('n\0'), ...encodeSecctx(null)]), 2, 0)).toBeNull();
    // Linux 6.2+: the same block as a request extension, located by total_extlen from the end.
    const ext = new Uint8Array([...enc.encode('n\0'), 0, 0, 0, 0, 0, 0, ...block]);
    expect(Buffer.from(decodeSecctx(ext, 2, block.length / 8)!.value).toString()).toBe('system_u:object_r:tmp_t:s0');
    for (const cut of [4, 12, block.length - 1]) expect(() => decodeSecctx(args.subarray(0, 5 + cut), 5, 0), `cut ${cut}`).toThrow(FuseProtocolError);
    const lying = block.slice();
    new DataView(lying.buffer).setUint32(8, 1000, true);
    expect(() => decodeSecctx(new Uint8Array([...enc.encode('name\0'), ...lying]), 5, 0)).toThrow(FuseProtocolError);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--security-label']).fs).toMatchObject({ securityLabel: true, xattr: true });
    // Newer virtiofsd's modes: auto serves a guest without FUSE_SECURITY_CTX instead of refusing its INIT.
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--security-label=auto']).fs).toMatchObject({ securityLabel: true, securityLabelAuto: true });
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--security-label=always']).fs).toMatchObject({ securityLabel: true, securityLabelAuto: false });
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--security-label=never']).fs.securityLabel).toBe(false);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '-o', 'security_label,no_security_label']).fs.securityLabel).toBe(false);
  });
});

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) f();
});

/** Host xattrs of every name in the share (not following symlinks). */
function hostXattrs(share: string): string {
  const py = `import os
for n in sorted(os.listdir('${share}')):
    p = os.path.join('${share}', n)
    print(n, sorted((k, os.getxattr(p, k, follow_symlinks=False).decode()) for k in os.listxattr(p, follow_symlinks=False)))`;
  return spawnSync('/usr/bin/python3', ['-c', py], { encoding: 'utf8' }).stdout.trim();
}

/** Creations with and without a label, as a guest kernel with an LSM sends them; returns replies and the host's xattrs. */
async function run(who: 'kumo' | 'qemu', extra: string[] = [], first = label('user.label', 'ctx-A')): Promise<{ granted: boolean; out: string[]; xattrs: string }> {
  const dir = mkdtempSync('/tmp/kumo-fs-secctx-');
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'existing'), 'x');
  const c = await connectFs({ who, kumoArgs: ['--security-label', ...extra], qemuOptions: ['xattr', 'security_label'] }, dir, share, cleanups);
  await c.init(INIT);
  const out: string[] = [];
  const step = async (what: string, f: () => Promise<unknown>): Promise<void> => {
    try {
      await f();
      out.push(`${what}: ok`);
    } catch (e) {
      if (!(e instanceof FuseReplyError)) throw e;
      out.push(`${what}: ${e.code}`);
    }
  };
  const create = (name: string) => async () => {
    const r = await c.create(FUSE_ROOT_ID, name, O_RDWR | O_CREAT, 0o100644);
    await c.release(r.entry.nodeid, r.fh);
  };
  c.securityContext = first;
  await step('mkdir', () => c.mkdir(FUSE_ROOT_ID, 'dir', 0o755));
  await step('create', create('file'));
  // QEMU's virtiofsd 7.2 aborts on this one (glibc: "invalid openat64 call: O_CREAT or O_TMPFILE without mode").
  if (who === 'kumo') await step('create existing', create('existing'));
  await step('mknod fifo', () => c.mknod(FUSE_ROOT_ID, 'fifo', 0o010644));
  await step('symlink', () => c.symlink(FUSE_ROOT_ID, 'link', 'file'));
  // A namespace the daemon may not write (trusted.* needs CAP_SYS_ADMIN, which it dropped): the creation fails.
  c.securityContext = label('trusted.label', 'ctx-B');
  await step('mkdir trusted', () => c.mkdir(FUSE_ROOT_ID, 'dir-trusted', 0o755));
  await step('create trusted', create('file-trusted'));
  c.securityContext = null;
  await step('mkdir unlabelled', () => c.mkdir(FUSE_ROOT_ID, 'dir-plain', 0o755));
  await step('create unlabelled', create('file-plain'));
  return { granted: c.granted(Init.SECURITY_CTX), out, xattrs: hostXattrs(share) };
}

describe('--security-label=auto', () => {
  it('serves a guest kernel without FUSE_SECURITY_CTX (labels off) where the bare flag refuses its INIT', async () => {
    for (const auto of [false, true]) {
      const s = new LocalShare('kumo-fs-label-auto-', { xattr: true, securityLabel: true, securityLabelAuto: auto });
      try {
        const init = s.client.init(INIT & ~Init.SECURITY_CTX);
        if (auto) expect(BigInt((await init).flags2) << 32n & Init.SECURITY_CTX).toBe(0n);
        else await expect(init).rejects.toThrow(/EPROTO/);
      } finally {
        s.close();
      }
    }
  });
});

describe.skipIf(!root)('--security-label: new inodes get the label the guest LSM chose', () => {
  it.skipIf(!existsSync(QEMU_VIRTIOFSD))('labels, refuses and undoes creations as QEMU virtiofsd -o security_label does', async () => {
    const k = await run('kumo');
    const q = await run('qemu');
    console.log(`security labels (kumo = QEMU):\n  ${k.out.join('\n  ')}\n  host:\n  ${k.xattrs.split('\n').join('\n  ')}`);
    expect(k.granted).toBe(true);
    expect(q.granted).toBe(true);
    expect(k.out.filter((l) => !l.startsWith('create existing'))).toEqual(q.out);
    expect(k.xattrs).toBe(q.xattrs);
    expect(k.out).toContain('create existing: ok');
    expect(k.out).toContain('mkdir: ok');
    expect(k.xattrs).toContain("dir [('user.label', 'ctx-A')]");
    expect(k.xattrs).toContain("file [('user.label', 'ctx-A')]");
    expect(k.xattrs).toContain('existing []');
    expect(k.xattrs).not.toContain('dir-trusted');
  }, 60_000);
  it('with an --xattrmap rule, an SELinux label lands under user.virtiofs. on a host that refuses security.*', async () => {
    const k = await run('kumo', ['--xattrmap=:map:security.:user.virtiofs.:'], label('security.selinux', 'system_u:object_r:container_file_t:s0'));
    expect(k.out.slice(0, 2)).toEqual(['mkdir: ok', 'create: ok']);
    expect(k.xattrs).toContain("dir [('user.virtiofs.security.selinux', 'system_u:object_r:container_file_t:s0')]");
    expect(k.xattrs).toContain("file [('user.virtiofs.security.selinux', 'system_u:object_r:container_file_t:s0')]");
  }, 30_000);
  it('refuses INIT from a guest kernel that does not offer FUSE_SECURITY_CTX (as virtiofsd), rather than making files unlabelled', async () => {
    const dir = mkdtempSync('/tmp/kumo-fs-secctx-');
    mkdirSync(join(dir, 'share'));
    const c = await connectFs({ who: 'kumo', kumoArgs: ['--security-label'] }, dir, join(dir, 'share'), cleanups);
    await expect(c.init(INIT & ~Init.SECURITY_CTX)).rejects.toThrow(/EPROTO/);
  }, 30_000);
  if (!existsSync(QEMU_VIRTIOFSD)) console.log(`security label comparison skipped: ${QEMU_VIRTIOFSD} is not installed`);
});
if (!root) console.log('security label tests skipped: the comparison runs both daemons as root');
