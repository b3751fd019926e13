import { afterEach, expect, test } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { LocalShare } from './local-transport.js';
import { FUSE_ROOT_ID } from '../../protocol/fuse/index.js';

let share: LocalShare | null = null;
afterEach(() => {
  share?.close();
  share = null;
});

/** Bytes of directory records the daemon keeps for READDIRs to come, over the handles fhs. */
function kept(s: LocalShare, fhs: number[]): number {
  let n = 0;
  for (const fh of fhs) n += s.fs.handles.tryGet(fh)?.stream?.pending?.length ?? 0;
  return n;
}

test('directory records kept between READDIRs are bounded over all handles, and a stream past the bound still lists everything', async () => {
  const s = (share = new LocalShare('kumo-readdir-pending-'));
  await s.client.init();
  mkdirSync(`${s.dir}/d`);
  const names = new Set<string>();
  for (let k = 0; k < 3000; k++) {
    const name = k.toString(36);
    names.add(name);
    writeFileSync(`${s.dir}/d/${name}`, '');
  }
  const d = await s.client.lookup(FUSE_ROOT_ID, 'd');
  // A guest that opens directory after directory and reads 64 KiB of each (READDIRPLUS) once: ~50 KiB of records
  // read ahead stay behind per handle, 40 MB over 800 handles without a bound.
  const fhs: number[] = [];
  const firsts: { fh: number; got: { name: string; off: bigint }[] }[] = [];
  for (let k = 0; k < 800; k++) {
    const { fh } = await s.client.opendir(d.nodeid);
    fhs.push(fh);
    const got = (await s.client.readdirplus(d.nodeid, fh, 0n, 65536)).map((e) => ({ name: Buffer.from(e.dirent.name).toString(), off: e.dirent.off }));
    firsts.push({ fh, got });
  }
  expect(kept(s, fhs)).toBeLessThanOrEqual(16 << 20);
  // The last stream (its records were not kept) goes on from its cookie and still sees every name once.
  const last = firsts[firsts.length - 1];
  const seen = last.got.map((e) => e.name);
  let off = last.got[last.got.length - 1].off;
  for (;;) {
    const more = await s.client.readdir(d.nodeid, last.fh, off, 65536);
    if (more.length === 0) break;
    for (const e of more) seen.push(Buffer.from(e.name).toString());
    off = more[more.length - 1].off;
  }
  const real = seen.filter((n) => n !== '.' && n !== '..');
  expect(real.length).toBe(names.size);
  expect(new Set(real)).toEqual(names);
  for (const fh of fhs) await s.client.release(d.nodeid, fh, true);
});
