// A front-end that truncates the memory file it shared would make the back-end touch pages past the file's end:
// SIGBUS, which kills a Node process outright. Back-ends seal the front-end's memfd against shrinking when it
// takes seals, and kumo's own guest memory is sealed as QEMU's memory-backend-memfd (seal=on) seals it.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { ftruncate, memfdCreate, MFD_ALLOW_SEALING, MFD_CLOEXEC } from '../../protocol/sys/mem.js';
import { fcntl } from '../../protocol/sys/fd.js';
import { SysError } from '../../protocol/sys/libc.js';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from '../blk/vu-client.js';

const F_GET_SEALS = 1034;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;
const MEM = 64 << 20;
const EPERM = 1;

function errnoOf(f: () => void): number | null {
  try {
    f();
    return null;
  } catch (e) {
    return e instanceof SysError ? e.errno : -1;
  }
}

/** Guest memory over a memfd the test made itself, with `flags` and no seals, at guest and user address 0. */
function memoryOn(flags: number): GuestMemory {
  const fd = memfdCreate('test-frontend-ram', flags);
  ftruncate(fd, MEM);
  return GuestMemory.fromRegions([{ guestAddr: 0, size: MEM, fd, fdOffset: 0, userAddr: 0 }], { seal: false });
}

/**
 * Waits up to `ms` for the back-end to have logged `text`: its stderr arrives through the event loop, and it logs
 * before it serves the first request, so once a request is served a short wait is enough to see nothing came.
 */
async function logged(log: () => string, text: string, ms = 5000): Promise<boolean> {
  for (let i = 0; i < ms / 50 && !log().includes(text); i++) await new Promise((r) => setTimeout(r, 50));
  return log().includes(text);
}

let dir = '';
let child: ChildProcess | null = null;
let client: BlkVuClient | null = null;

afterEach(async () => {
  client?.close();
  client = null;
  if (child) await stopBackend(child, 'SIGKILL');
  child = null;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Starts kumo-vhost-user-blk at info level; returns what it logs. */
async function backend(): Promise<{ sock: string; log: () => string }> {
  dir = mkdtempSync('/tmp/kumo-memseal-');
  const img = join(dir, 'disk.raw');
  const sock = join(dir, 'blk.sock');
  writeFileSync(img, Buffer.alloc(1 << 20, 0x5a));
  child = await startBackend(`path=${img},socket=${sock}`, { KUMO_LOG: 'info' });
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  return { sock, log: () => log };
}

/** One 4 KiB read into the upper half of guest memory (the part a truncation would cut off). */
function readHigh(c: BlkVuClient, token: number): void {
  const data = 40 << 20;
  const st = c.add(0, VIRTIO_BLK_T_IN, 0, [], [{ addr: data, len: 4096 }], token);
  expect(c.run(0, 1).get(token)).toBe(4097);
  expect(c.mem.readU8(st)).toBe(VIRTIO_BLK_S_OK);
  expect(c.mem.readU8(data + 100)).toBe(0x5a);
}

describe('guest memory cannot be truncated under a back-end', () => {
  it("a back-end seals a sealable front-end memfd against shrinking, so the front-end's truncate fails and the back-end lives", async () => {
    const b = await backend();
    const mem = memoryOn(MFD_CLOEXEC | MFD_ALLOW_SEALING);
    const fd = mem.regions[0].fd;
    expect(fcntl(fd, F_GET_SEALS, 0)).toBe(0);
    client = await BlkVuClient.connect(b.sock, { memory: mem, memSize: MEM });
    client.alloc.allocOrThrow(48 << 20, 4096);
    readHigh(client, 1);
    expect(fcntl(fd, F_GET_SEALS, 0) & F_SEAL_SHRINK).toBe(F_SEAL_SHRINK);
    expect(errnoOf(() => ftruncate(fd, MEM / 2))).toBe(EPERM);
    readHigh(client, 2);
    expect(child?.exitCode).toBeNull();
    expect(child?.signalCode).toBeNull();
    expect(await logged(b.log, 'takes no shrink seal', 500)).toBe(false);
  }, 30_000);

  it('a memfd made without MFD_ALLOW_SEALING is still served, and the back-end says it could be truncated', async () => {
    const b = await backend();
    client = await BlkVuClient.connect(b.sock, { memory: memoryOn(MFD_CLOEXEC), memSize: MEM });
    client.alloc.allocOrThrow(48 << 20, 4096);
    readHigh(client, 1);
    expect(await logged(b.log, 'takes no shrink seal')).toBe(true);
  }, 30_000);

  it("kumo's own guest memory is sealed against resizing, so no back-end can truncate it under the VMM", () => {
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
    try {
      const fd = mem.regions[0].fd;
      const all = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
      expect(fcntl(fd, F_GET_SEALS, 0) & all).toBe(all);
      expect(errnoOf(() => ftruncate(fd, 4096))).toBe(EPERM);
      expect(errnoOf(() => ftruncate(fd, 2 << 20))).toBe(EPERM);
    } finally {
      mem.close();
    }
  });
});
