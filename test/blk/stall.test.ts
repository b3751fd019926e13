// A device that holds a write up for longer than a command used to wait for a queue worker (10 s): the image's
// file system frozen, as for a backup snapshot. QEMU waits for GET_VRING_BASE without limit; so must the back-end.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { closeQuiet, eventfdWrite, openFile, O_RDWR } from '../../protocol/sys/fd.js';
import { fcntlLock, F_OFD_SETLK, F_WRLCK } from '../../protocol/sys/fs.js';
import { BlkVuClient, startBackend, stopBackend } from './vu-client.js';
import { ftruncate, memfdCreate, MFD_CLOEXEC } from '../../protocol/sys/mem.js';

const FREEZE_S = 12;
const sh = (cmd: string): void => void spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });

function whyNot(): string | null {
  if (process.getuid?.() !== 0) return 'not root (loop device, mount, fsfreeze)';
  for (const tool of ['losetup', 'mkfs.ext4', 'fsfreeze']) if (spawnSync(tool, ['-V']).error) return `${tool} missing`;
  if (!existsSync('/dev/loop-control')) return 'no loop devices';
  return null;
}
const why = whyNot();
if (why !== null) console.log(`test/blk/stall.test.ts skipped: ${why}`);

/** A 16 MiB image on an ext4 file system of its own (a loop device on tmpfs) that a test may freeze; torn down after. */
async function withFreezableImage(body: (mnt: string, img: string, sock: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync('/tmp/kumo-blk-stall-');
  const backing = join('/dev/shm', `kumo-blk-stall-${process.pid}.ext4`);
  const mnt = join(dir, 'mnt');
  let loop = '';
  try {
    sh(`truncate -s 128M ${backing} && mkfs.ext4 -q -F ${backing}`);
    loop = spawnSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' }).stdout.trim();
    mkdirSync(mnt);
    expect(spawnSync('mount', [loop, mnt]).status).toBe(0);
    sh(`truncate -s 16M ${mnt}/img`);
    await body(mnt, `${mnt}/img`, join(dir, 'blk.sock'));
  } finally {
    sh(`fsfreeze -u ${mnt} 2>/dev/null`);
    sh(`umount ${mnt} 2>/dev/null || umount -l ${mnt}`);
    if (loop) spawnSync('losetup', ['-d', loop]);
    rmSync(backing, { force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Thaws `mnt` from another process after `s` seconds (this one may block meanwhile). */
function thawLater(mnt: string, s: number): void {
  spawn('sh', ['-c', `sleep ${s}; fsfreeze -u ${mnt}`], { stdio: 'ignore', detached: true }).unref();
}

/** Submits a 4 KiB write of `byte` at `sector` on queue 0 without waiting for it. */
function startWrite(c: BlkVuClient, sector: number, byte: number, token: number): void {
  const data = c.buf(4096);
  c.mem.fill(data, 4096, byte);
  c.add(0, VIRTIO_BLK_T_OUT, sector, [{ addr: data, len: 4096 }], [], token);
  c.queues[0].driver.publish();
  eventfdWrite(c.queues[0].kick);
}

/** Whether `pid` has ended (a zombie has released its files and locks). */
/** Writes 0xab over sector 0's 4 KiB block, to be read back into hotplugged memory. */
function seedSectorZero(c: BlkVuClient): void {
  const buf = c.buf(4096);
  c.mem.fill(buf, 4096, 0xab);
  c.add(0, VIRTIO_BLK_T_OUT, 0, [{ addr: buf, len: 4096 }], [], 1);
  c.run(0, 1);
}

/** A 2 MiB DIMM: a memfd added to the test's memory (its driver checks buffers against it); `send`: ADD_MEM_REG too. */
function dimm(c: BlkVuClient, guestAddr: number, userAddr: number, send = true): { guestAddr: number; size: number; userAddr: number; mmapOffset: number; fd: number } {
  const r = { guestAddr, size: 2 << 20, userAddr, mmapOffset: 0 };
  const fd = memfdCreate('kumo-test-dimm', MFD_CLOEXEC);
  ftruncate(fd, r.size);
  c.mem.addRegion({ guestAddr, size: r.size, fd, fdOffset: 0, userAddr });
  if (send) c.fe.addMemRegion(r, fd);
  return { ...r, fd };
}

/** Reads sector 0 into `gpa` as request `token`, with the held-up write (token 2) done too: the seed must be there. */
function expectSeedRead(c: BlkVuClient, gpa: number): void {
  const status = c.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: gpa, len: 4096 }], 3);
  expect([...c.run(0, 2, 20_000).keys()].sort()).toEqual([2, 3]);
  expect(c.mem.readU8(status)).toBe(0); // VIRTIO_BLK_S_OK
  const got = new Uint8Array(4096);
  c.mem.read(gpa, got);
  expect(got.every((b) => b === 0xab)).toBe(true);
}

function ended(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? true;
  } catch {
    return true;
  }
}

/**
 * A back-end on a freezable image, sector zero seeded, `prepare` run (a DIMM plugged, say), then a write held up by
 * fsfreeze for `thawS` s: `held` gets the client while the queue thread waits.
 */
async function withHeldWrite<T>(thawS: number, prepare: (c: BlkVuClient, pid: number) => T, held: (c: BlkVuClient, prepared: T, pid: number) => Promise<void>): Promise<void> {
  await withFreezableImage(async (mnt, img, sock) => {
    const child = await startBackend(`path=${img},socket=${sock}`);
    try {
      const c = await BlkVuClient.connect(sock);
      seedSectorZero(c);
      const prepared = prepare(c, child.pid!);
      sh(`fsfreeze -f ${mnt}`);
      thawLater(mnt, thawS);
      startWrite(c, 8, 0xcd, 2);
      await new Promise((r) => setTimeout(r, 300));
      await held(c, prepared, child.pid!);
      c.close();
    } finally {
      sh(`fsfreeze -u ${mnt} 2>/dev/null`);
      await stopBackend(child);
    }
  });
}

describe.skipIf(why !== null)('vhost-user-blk with a stalled device', () => {
  it(`GET_VRING_BASE waits for a write the device holds up for ${FREEZE_S} s and returns it completed; the next front-end reads it`, async () => {
    let child: Awaited<ReturnType<typeof startBackend>> | null = null;
    await withFreezableImage(async (mnt, img, sock) => {
      try {
        child = await startBackend(`path=${img},socket=${sock}`);
        const c = await BlkVuClient.connect(sock);
        const buf = c.buf(4096);
        c.mem.fill(buf, 4096, 0xab);
        c.add(0, VIRTIO_BLK_T_OUT, 0, [{ addr: buf, len: 4096 }], [], 1);
        c.run(0, 1);
        sh(`fsfreeze -f ${mnt}`);
        thawLater(mnt, FREEZE_S);
        startWrite(c, 8, 0xcd, 2);
        await new Promise((r) => setTimeout(r, 300));
        const t0 = Date.now();
        // It answered nothing and closed the connection after 10 s: the front-end lost its disk.
        expect(c.fe.getVringBase(0)).toBe(2);
        expect(Date.now() - t0).toBeGreaterThan((FREEZE_S - 2) * 1000);
        expect(c.queues[0].driver.takeUsed().map((u) => u.token)).toEqual([2]);
        c.close();
        const d = await BlkVuClient.connect(sock);
        const back = d.buf(4096);
        d.add(0, VIRTIO_BLK_T_IN, 8, [], [{ addr: back, len: 4096 }], 1);
        d.run(0, 1);
        const got = new Uint8Array(4096);
        d.mem.read(back, got);
        expect(got.every((b) => b === 0xcd)).toBe(true);
        d.close();
      } finally {
        sh(`fsfreeze -u ${mnt} 2>/dev/null`);
        if (child !== null) await stopBackend(child);
      }
    });
  }, 60_000);

  it('memory hotplug (ADD_MEM_REG) is answered at once while a write is held up, and a read into the new memory made right after it succeeds', async () => {
    // QEMU waits for the ADD_MEM_REG answer in its main loop with the BQL held (device_add pc-dimm): a back-end that
    // waited for its queue thread first froze the whole guest, and its monitor, for as long as the device held a write
    // (here the image's file system frozen 6 s, as for a backup snapshot; qemu-storage-daemon answers in 1 ms).
    // A 2 MiB DIMM at 4 GiB.
    await withHeldWrite(6, (c) => dimm(c, 0x1_0000_0000, 0x1000_0000_0000, false), async (c, hot) => {
      const t0 = Date.now();
      c.fe.addMemRegion(hot, hot.fd);
      const took = Date.now() - t0;
      expect(took, `ADD_MEM_REG answered after ${took} ms`).toBeLessThan(1000);
      // The driver uses the new memory at once, while the queue thread is still held up.
      expectSeedRead(c, hot.guestAddr + 4096);
    });
  }, 60_000);

  it('memory unplug (REM_MEM_REG) is answered at once while a write is held up, and memory added after it is usable at once', async () => {
    // device_del pc-dimm: QEMU waits for the REM_MEM_REG answer as for ADD_MEM_REG (qemu-storage-daemon: 1 ms). The
    // region stays mapped here until the requests in flight are done, so none of them can touch unmapped memory.
    const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
    const plugged = (c: BlkVuClient, pid: number) => ({ d1: dimm(c, 0x1_0000_0000, 0x1000_0000_0000), fdsBefore: fdCount(pid) });
    await withHeldWrite(6, plugged, async (c, { d1, fdsBefore }, pid) => {
      const fds = (): number => fdCount(pid);
      const t0 = Date.now();
      c.fe.removeMemRegion(d1);
      const took = Date.now() - t0;
      expect(took, `REM_MEM_REG answered after ${took} ms`).toBeLessThan(1000);
      // Another DIMM right away, used at once, while the queue thread is still held up.
      const d2 = dimm(c, 0x1_4000_0000, 0x2000_0000_0000);
      expect(Date.now() - t0).toBeLessThan(1000);
      expectSeedRead(c, d2.guestAddr);
      // The first DIMM's mapping and fd went once its turn came: one DIMM held, as before the unplug.
      for (const until = Date.now() + 3000; fds() !== fdsBefore && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
      expect(fds()).toBe(fdsBefore);
      expect(readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('kumo-test-dimm')).length).toBe(1);
    });
  }, 60_000);

  it('a DIMM unplugged and another plugged at its address while a write is held up: requests use the new one, never the old mapping', async () => {
    // REM_MEM_REG is answered before the held-up queue thread unmapped the old DIMM; the ADD_MEM_REG of a new one at the
    // same address must not be answered until it did, or a request made meanwhile read into the old memory.
    await withHeldWrite(4, (c) => dimm(c, 0x1_0000_0000, 0x1000_0000_0000), async (c, region) => {
      c.fe.removeMemRegion(region);
      c.mem.removeRegion(region.guestAddr, region.size, region.userAddr);
      // QEMU reuses the address range and, often, its own mapping address.
      dimm(c, region.guestAddr, region.userAddr);
      expectSeedRead(c, region.guestAddr);
    });
  }, 60_000);

  it('SIGTERM with a write held up past the bounded stop: the image stays locked until the process and its write are gone', async () => {
    await withFreezableImage(async (mnt, img, sock) => {
      const child = await startBackend(`path=${img},socket=${sock}`);
      const probe = openFile(img, O_RDWR);
      try {
        const c = await BlkVuClient.connect(sock);
        sh(`fsfreeze -f ${mnt}`);
        thawLater(mnt, 4);
        startWrite(c, 8, 0xcd, 1);
        await new Promise((r) => setTimeout(r, 300));
        child.kill('SIGTERM');
        // The lock went with the 1 s stop while the write still waited: a restarted back-end took the image, wrote
        // and acked, and the old write landed over it.
        let aliveWhenFree: boolean | null = null;
        for (const until = Date.now() + 20_000; Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
          try {
            fcntlLock(probe, F_OFD_SETLK, { type: F_WRLCK, whence: 0, start: 0n, len: 0n, pid: 0 });
          } catch {
            continue;
          }
          aliveWhenFree = !ended(child.pid as number);
          break;
        }
        expect(aliveWhenFree).toBe(false);
        c.close();
        // Never acked, yet it landed before the lock went: nothing can land after the next writer took the image.
        expect(readFileSync(img).subarray(4096, 8192).every((b) => b === 0xcd)).toBe(true);
      } finally {
        sh(`fsfreeze -u ${mnt} 2>/dev/null`);
        await stopBackend(child, 'SIGKILL');
        closeQuiet(probe);
      }
    });
  }, 60_000);
});
