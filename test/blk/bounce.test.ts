// DirectBounce's arithmetic against a model of the file: ranges that start and end anywhere on 512-byte
// sectors, guest buffers split at odd addresses, requests many chunks long, and a file whose end lies
// inside a block. A plain file stands in for the O_DIRECT one: the class only keeps to the alignment.
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DirectBounce } from '../../backends/vhost-user-blk/bounce.js';
import { GuestMemory } from '../../protocol/memory/index.js';
import type { Segment } from '../../protocol/virtqueue/index.js';
import { fuzzSeed, Rng } from '../fuzz-rng.js';

const ALIGN = 4096;
const CHUNK = 2 * ALIGN;
const SIZE = 40 * ALIGN + 1536; // the last block is partly past the end
const SECTOR = 512;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kumo-bounce-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('DirectBounce', () => {
  it('reads, writes and zeroes any sector range through a small buffer exactly as the model says', () => {
    const seed = fuzzSeed(4242);
    const rng = new Rng(seed);
    const model = rng.bytes(SIZE);
    const path = join(dir, 'img.raw');
    writeFileSync(path, model);
    const fd = openSync(path, 'r+');
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 4 << 20 }]);
    const b = new DirectBounce(fd, ALIGN, SIZE, CHUNK);
    try {
      /** `len` bytes of guest memory in 1-4 segments at odd addresses, with a `skip`-byte header before them. */
      const segments = (len: number, skip: number): Segment[] => {
        const cuts = [0, ...Array.from({ length: rng.below(4) }, () => rng.below(len + 1)), len].sort((x, y) => x - y);
        const segs: Segment[] = skip > 0 ? [{ addr: 0, len: skip }] : [];
        let at = 64 * 1024;
        for (let i = 1; i < cuts.length; i++) {
          at += 1 + rng.below(4096);
          segs.push({ addr: at, len: cuts[i] - cuts[i - 1] });
          at += cuts[i] - cuts[i - 1];
        }
        return segs.filter((s) => s.len > 0);
      };
      const bytesOf = (segs: Segment[], skip: number, len: number): Buffer => {
        const out = Buffer.alloc(len);
        let done = 0;
        let left = skip;
        for (const s of segs) {
          const k = Math.min(left, s.len);
          left -= k;
          if (s.len - k === 0) continue;
          const part = Buffer.alloc(s.len - k);
          mem.read(s.addr + k, part);
          part.copy(out, done);
          done += part.length;
        }
        return out.subarray(0, len);
      };
      for (let op = 0; op < 3000; op++) {
        const sectors = SIZE / SECTOR;
        const first = rng.below(sectors);
        const n = 1 + rng.below(Math.min(sectors - first, rng.below(4) === 0 ? sectors : 12));
        const offset = first * SECTOR;
        const len = n * SECTOR;
        const skip = rng.below(2) === 0 ? 16 : 0;
        const kind = rng.below(3);
        if (kind === 0) {
          const segs = segments(len, skip);
          expect(b.read(mem, segs, skip, offset, len), `op ${op} seed ${seed}`).toBe(len);
          expect(bytesOf(segs, skip, len).equals(model.subarray(offset, offset + len)), `read op ${op} seed ${seed}`).toBe(true);
        } else if (kind === 1) {
          const segs = segments(len, skip);
          const data = rng.bytes(len);
          let done = 0;
          let left = skip;
          for (const s of segs) {
            const k = Math.min(left, s.len);
            left -= k;
            mem.write(s.addr + k, data.subarray(done, done + s.len - k));
            done += s.len - k;
          }
          expect(b.write(mem, segs, skip, offset, len), `op ${op} seed ${seed}`).toBe(len);
          data.copy(model, offset);
        } else {
          expect(b.zero(offset, len), `op ${op} seed ${seed}`).toBe(len);
          model.fill(0, offset, offset + len);
        }
        expect(fstatSync(fd).size, `op ${op} seed ${seed}`).toBe(SIZE);
      }
    } finally {
      b.free();
      mem.close();
      closeSync(fd);
    }
    expect(readFileSync(path).equals(model), `seed ${seed}`).toBe(true);
  });
});
