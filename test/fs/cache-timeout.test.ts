import { describe, it, expect, afterEach } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AttrOut, FuseClient, FUSE_ROOT_ID, GetattrIn, Op, SetattrIn } from '../../protocol/fuse/index.js';
import { PassthroughFs } from '../../backends/virtiofsd/passthrough.js';
import { FuseServer } from '../../backends/virtiofsd/server.js';
import { defaultFsOptions, type FsOptions } from '../../backends/virtiofsd/options.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';
import { LocalTransport } from './local-transport.js';

let base = '';
let fs: PassthroughFs | null = null;
afterEach(() => {
  fs?.close();
  fs = null;
  rmSync(base, { recursive: true, force: true });
});

async function client(opts: Partial<FsOptions>): Promise<FuseClient> {
  base = mkdtempSync('/tmp/kumo-fs-timeout-');
  writeFileSync(join(base, 'f'), 'x');
  fs = new PassthroughFs({ ...defaultFsOptions(base), ...opts });
  const c = new FuseClient(new LocalTransport(new FuseServer(fs)));
  await c.init();
  return c;
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
      fs!.close();
      fs = null;
      rmSync(base, { recursive: true, force: true });
    }
  });
});
