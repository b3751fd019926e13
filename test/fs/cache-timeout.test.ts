import { describe, it, expect, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AttrOut, Fopen, FuseClient, FUSE_ROOT_ID, GetattrIn, Init, Op, SetattrIn } from '../../protocol/fuse/index.js';
import type { FsOptions } from '../../backends/virtiofsd/options.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { LocalShare } from './local-transport.js';

let share: LocalShare | null = null;
afterEach(() => reset());

function reset(): void {
  share?.close();
  share = null;
}

async function client(opts: Partial<FsOptions>, initFlags?: bigint): Promise<FuseClient> {
  share = new LocalShare('kumo-fs-timeout-', opts);
  writeFileSync(join(share.dir, 'f'), 'x');
  await share.client.init(initFlags);
  return share.client;
}

describe('entry and attribute cache time', () => {
  it("follows QEMU virtiofsd's -o timeout=SECONDS, fractions included, on every reply that carries it", async () => {
    expect(parseArgs(['--socket-path=/s', '-o', 'source=/d,cache=always,timeout=2.5']).fs.timeout).toBe(2.5);
    for (const bad of ['timeout=', 'timeout=-1', 'timeout=soon']) {
      expect(() => parseArgs(['--socket-path=/s', '-o', `source=/d,${bad}`]), bad).toThrow(/-o timeout must be a number of seconds/);
    }
    const c = await client({ cache: 'always', timeout: 2.5 });
    const e = await c.lookup(FUSE_ROOT_ID, 'f');
    expect([e.entryValid, e.entryValidNsec, e.attrValid, e.attrValidNsec]).toEqual([2, 500_000_000, 2, 500_000_000]);
    const g = AttrOut.decode(await c.call(Op.GETATTR, e.nodeid, [GetattrIn.pack({ getattrFlags: 0, fh: 0 })], AttrOut.size));
    expect([g.attrValid, g.attrValidNsec]).toEqual([2, 500_000_000]);
    const setattr = { valid: 1, fh: 0, size: 0, lockOwner: 0n, atime: 0, mtime: 0, ctime: 0, atimensec: 0, mtimensec: 0, ctimensec: 0, mode: 0o600, uid: 0, gid: 0 };
    const s = AttrOut.decode(await c.call(Op.SETATTR, e.nodeid, [SetattrIn.pack(setattr)], AttrOut.size));
    expect([s.attrValid, s.attrValidNsec]).toEqual([2, 500_000_000]);
    const created = await c.create(FUSE_ROOT_ID, 'g', 0o1, 0o644);
    expect([created.entry.entryValid, created.entry.entryValidNsec]).toEqual([2, 500_000_000]);
  });

  it('otherwise follows the cache mode as virtiofsd does', async () => {
    for (const [cache, t] of [['never', 0], ['auto', 1], ['always', 86400]] as const) {
      const c = await client({ cache });
      const e = await c.lookup(FUSE_ROOT_ID, 'f');
      expect([e.entryValid, e.entryValidNsec, e.attrValid], cache).toEqual([t, 0, t]);
      reset();
    }
  });
});

describe('open flags by cache mode', () => {
  it('keep file data out of the guest cache under never and metadata, and listings under always and metadata', async () => {
    const { DIRECT_IO, KEEP_CACHE, CACHE_DIR } = Fopen;
    const want = { never: [DIRECT_IO, 0], auto: [0, 0], always: [KEEP_CACHE, CACHE_DIR | KEEP_CACHE], metadata: [DIRECT_IO, CACHE_DIR | KEEP_CACHE] };
    for (const [cache, [file, dir]] of Object.entries(want) as [FsOptions['cache'], number[]][]) {
      const c = await client({ cache });
      const e = await c.lookup(FUSE_ROOT_ID, 'f');
      const created = await c.create(FUSE_ROOT_ID, 'g', 0o1, 0o644);
      expect([(await c.open(e.nodeid, 0)).openFlags, (await c.opendir(FUSE_ROOT_ID)).openFlags, created.openFlags], cache).toEqual([file, dir, file]);
      reset();
    }
  });

  it('--allow-mmap takes FUSE_DIRECT_IO_ALLOW_MMAP from a guest that offers it, and only then', async () => {
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--cache=never', '--allow-mmap']).fs.allowMmap).toBe(true);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d']).fs.allowMmap).toBe(false);
    const offer = Init.ASYNC_READ | Init.INIT_EXT | Init.DIRECT_IO_ALLOW_MMAP;
    for (const [allowMmap, offered, granted] of [[true, offer, true], [false, offer, false], [true, offer & ~Init.DIRECT_IO_ALLOW_MMAP, false]] as const) {
      const c = await client({ cache: 'never', allowMmap }, offered);
      expect(c.granted(Init.DIRECT_IO_ALLOW_MMAP), `allowMmap=${allowMmap}`).toBe(granted);
      reset();
    }
  });
});

describe('virtiofsd migration options', () => {
  it('are accepted with their values checked, and warned about (no device state is offered)', () => {
    const cfg = parseArgs(['--socket-path=/s', '--shared-dir=/d', '--migration-mode=find-paths', '--migration-on-error', 'guest-error',
      '--migration-verify-handles', '--migration-confirm-paths']);
    expect(cfg.ignored).toEqual(['migration-mode', 'migration-on-error', 'migration-verify-handles', 'migration-confirm-paths']);
    expect(parseArgs(['--socket-path=/s', '--shared-dir=/d', '--migration-mode=file-handles']).ignored).toEqual(['migration-mode']);
    // As virtiofsd: the path checks belong to find-paths migration.
    expect(() => parseArgs(['--socket-path=/s', '--shared-dir=/d', '--migration-mode=file-handles', '--migration-confirm-paths']))
      .toThrow(/--migration-confirm-paths only applies to --migration-mode=find-paths/);
    expect(() => parseArgs(['--socket-path=/s', '--shared-dir=/d', '--migration-mode=teleport'])).toThrow(/--migration-mode must be one of find-paths\|file-handles/);
    expect(() => parseArgs(['--socket-path=/s', '--shared-dir=/d', '--migration-on-error=ignore'])).toThrow(/--migration-on-error must be one of abort\|guest-error/);
  });
});
