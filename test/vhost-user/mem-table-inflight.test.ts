import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { dup, eventfdWrite } from '../../protocol/sys/fd.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from '../blk/vu-client.js';

const IMG_SIZE = 32 << 20;
const MEM = 128 << 20;
const BS = 64 << 10;
const PER_ROUND = 40; // three descriptors each: 120 of 128

/** The client's RAM as a different table over the same memfd: two regions, same guest and user addresses. */
function splitTable(mem: GuestMemory): GuestMemory {
  const r = mem.regions[0];
  const half = r.size / 2;
  return GuestMemory.fromRegions([
    { guestAddr: r.guestAddr, size: half, fd: dup(r.fd), fdOffset: r.fdOffset, userAddr: r.userAddr },
    { guestAddr: r.guestAddr + half, size: half, fd: dup(r.fd), fdOffset: r.fdOffset + half, userAddr: r.userAddr + half },
  ]);
}

let dir = '';
let child: ChildProcess | null = null;
let client: BlkVuClient | null = null;
const tables: GuestMemory[] = [];

afterEach(async () => {
  client?.close();
  client = null;
  tables.splice(0).forEach((t) => t.close());
  if (child) await stopBackend(child, 'SIGKILL');
  child = null;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('memory table changes while requests are in flight (vhost-user-blk, io_uring)', () => {
  // writethrough: a write's used entry waits for its fdatasync, so requests are in flight in io_uring
  // when the new table arrives; on disk (not tmpfs) so the sync takes real time.
  it.each([{ writethrough: true }, { writethrough: false }])('SET_MEM_TABLE with writes in flight loses and corrupts nothing (writethrough=$writethrough)', async ({ writethrough }) => {
    dir = mkdtempSync('/var/tmp/kumo-vu-memtable-');
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(IMG_SIZE));
    child = await startBackend(`path=${img},socket=${sock},queue_size=128`);
    const c = (client = await BlkVuClient.connect(sock, { queueSize: 128, memSize: MEM, writethrough, indirect: false }));
    const bufs = Array.from({ length: PER_ROUND }, () => c.buf(BS, 4096));
    const expected = new Map<number, Buffer>();
    for (let round = 0; round < 6; round++) {
      const statuses: number[] = [];
      for (let k = 0; k < PER_ROUND; k++) {
        const block = round * PER_ROUND + k;
        const data = randomBytes(BS);
        c.mem.write(bufs[k], data);
        expected.set(block, data);
        statuses.push(c.add(0, VIRTIO_BLK_T_OUT, block * (BS / 512), [{ addr: bufs[k], len: BS }], [], k));
      }
      const q = c.queues[0];
      q.driver.publish();
      eventfdWrite(q.kick);
      // Alternate between a split table and the original one, both over the same memfd.
      const next = round % 2 === 0 ? splitTable(c.mem) : c.mem;
      if (next !== c.mem) tables.push(next);
      c.fe.setMemTable(next);
      const used = c.run(0, PER_ROUND);
      expect(used.size).toBe(PER_ROUND);
      expect(statuses.map((s) => c.mem.readU8(s))).toEqual(statuses.map(() => VIRTIO_BLK_S_OK));
    }
    expect(child.exitCode).toBeNull();
    // Read everything back through the device, then check the file itself.
    for (const [block, data] of expected) {
      if (block % 8 !== 0) continue;
      c.add(0, VIRTIO_BLK_T_IN, block * (BS / 512), [], [{ addr: bufs[0], len: BS }], 0);
      c.run(0, 1);
      expect(Buffer.from(c.mem.slice(bufs[0], BS)).equals(data)).toBe(true);
    }
    const file = readFileSync(img);
    for (const [block, data] of expected) expect(file.subarray(block * BS, (block + 1) * BS).equals(data)).toBe(true);
  });
});
