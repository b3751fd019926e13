import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import {
  BlkConfig, encodeBlkHeader, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from '../../protocol/virtio/blk.js';
import { bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../protocol/virtio/features.js';
import { DiskConfig } from '../../vmm/config/disk.js';
import { MemoryConfig } from '../../vmm/config/memory.js';
import { validateVhostUserDevices } from '../../vmm/config/vhost-user-devices.js';
import { attachVhostUserDevices, vhostUserDevices, type VhostUserAttachment } from '../../vmm/vhost-user/index.js';
import type { ConnectTiming } from '../../vmm/vhost-user/connect.js';
import { startTsWorker } from '../../vmm/vcpu/ts-worker.js';
import { GuestDriver, MiB, startProcess, stopProcess, TestVm, type GuestQueue } from './harness.js';
import { haveQsd } from '../blk/vu-client.js';

const IMG_SIZE = 8 * MiB;
const KUMO_BLK = new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url).pathname;

interface Backend {
  name: string;
  available: () => string | null;
  start: (img: string, sock: string) => Promise<ChildProcess>;
}

const backends: Backend[] = [
  {
    name: 'kumo-vhost-user-blk',
    available: () => (existsSync(KUMO_BLK) ? null : 'bin/kumo-vhost-user-blk.js missing'),
    start: (img, sock) => startProcess(process.execPath, [KUMO_BLK, '--block-backend', `path=${img},socket=${sock},num_queues=1,queue_size=256`], sock),
  },
  {
    name: 'qemu-storage-daemon',
    available: () => (haveQsd() ? null : 'qemu-storage-daemon not installed (apt-get install qemu-system-common)'),
    start: (img, sock) =>
      startProcess('qemu-storage-daemon', [
        '--blockdev', `driver=file,node-name=f,filename=${img}`,
        '--export', `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${sock},writable=on`,
      ], sock),
  },
];

/** One virtio-blk request the way Linux's virtio_blk queues it: header, data, status. */
function request(vm: TestVm, q: GuestQueue, type: number, sector: number, data: { addr: number; len: number }, token: number): number {
  const hdr = vm.alloc.allocOrThrow(VIRTIO_BLK_OUTHDR_SIZE, 16);
  vm.mem.write(hdr, encodeBlkHeader({ type, ioprio: 0, sector }));
  const status = vm.alloc.allocOrThrow(1, 1);
  vm.mem.writeU8(status, 0xff);
  const rd = type === VIRTIO_BLK_T_OUT ? [{ addr: hdr, len: VIRTIO_BLK_OUTHDR_SIZE }, data] : [{ addr: hdr, len: VIRTIO_BLK_OUTHDR_SIZE }];
  const wr = type === VIRTIO_BLK_T_OUT ? [{ addr: status, len: 1 }] : [data, { addr: status, len: 1 }];
  if (q.dq.add(rd, wr, token) === null) throw new Error('queue full');
  q.dq.publish();
  return status;
}

/** A 4 KiB write of `fill` at `sector`, queued (not kicked); returns its status byte's address. */
function writeBlock(vm: TestVm, q: GuestQueue, sector: number, fill: number, token: number): number {
  const buf = vm.alloc.allocOrThrow(4096, 512);
  vm.mem.slice(buf, 4096).fill(fill);
  return request(vm, q, VIRTIO_BLK_T_OUT, sector, { addr: buf, len: 4096 }, token);
}

/** Lets the main loop run for ~200 ms (it sees a hang-up there and starts reconnecting). */
async function runLoop(vm: TestVm): Promise<void> {
  for (let i = 0; i < 20; i++) {
    vm.loop.poll(10);
    await new Promise((r) => setTimeout(r, 10));
  }
}

for (const b of backends) {
  const why = b.available();
  describe.skipIf(why !== null)(`vhost-user-blk through the virtio-pci model (${b.name})`, () => {
    let dir: string;
    let img: string;
    let sock: string;
    let child: ChildProcess | null = null;
    let att: VhostUserAttachment | null = null;
    let vm: TestVm | null = null;

    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'kumo-vmm-vu-'));
      img = join(dir, 'disk.raw');
      sock = join(dir, 'blk.sock');
      writeFileSync(img, Buffer.alloc(IMG_SIZE));
    });
    afterEach(async () => {
      att?.close();
      vm?.close();
      await stopProcess(child);
      att = null;
      vm = null;
      child = null;
      rmSync(dir, { recursive: true, force: true });
    });

    /** The back-end started, and kumo's device model attached to it (main-thread links) in a fresh TestVm. */
    async function attachDisk(timing: ConnectTiming): Promise<{ v: TestVm; a: VhostUserAttachment }> {
      child = await b.start(img, sock);
      const disk = DiskConfig.parse(`vhost_user=on,socket=${sock},queue_size=128`);
      const devices = { disks: [disk], net: [], fs: [] };
      validateVhostUserDevices(devices, new MemoryConfig(512 * MiB, true));
      vm = new TestVm();
      att = await attachVhostUserDevices(devices, vm.callFd, timing);
      return { v: vm, a: att };
    }

    /** attachDisk with a 20 s reconnect window, the model built, and a guest driver with MSI-X on (not started). */
    async function guestDisk(): Promise<{ v: TestVm; a: VhostUserAttachment; g: GuestDriver }> {
      const { v, a } = await attachDisk({ retryForMs: 5000, reconnectForMs: 20_000 });
      v.build(vhostUserDevices(a.specs, a.links));
      const g = new GuestDriver(v, 0);
      g.enableMsix();
      return { v, a, g };
    }

    it('a guest driver writes a block and reads it back; config, WCE and reset/re-activation', async () => {
      const { v, a } = await attachDisk({ retryForMs: 5000 });
      expect(a.specs.map((s) => s.id)).toEqual(['_disk0']);
      v.build(vhostUserDevices(a.specs, a.links));
      // A vCPU worker's model (no connection) answers the same config from the shared spec.
      const replica = v.buildReplica(vhostUserDevices(structuredClone(a.specs)));
      expect(replica.virtio[0].device.features()).toBe(a.specs[0].features);

      const g = new GuestDriver(v, 0);
      expect(g.config(BlkConfig.capacity, 4) + g.config(BlkConfig.capacity + 4, 4) * 2 ** 32).toBe(IMG_SIZE / 512);
      const offered = g.deviceFeatures();
      expect(offered & (1n << 30n)).toBe(0n); // vhost-user's PROTOCOL_FEATURES bit stays between VMM and backend
      expect(offered & bits(VIRTIO_F_VERSION_1)).not.toBe(0n);
      g.enableMsix();
      const want = bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE);
      g.start(want, [128]);
      expect(a.links.get('_disk0')!.activeQueues).toEqual([0]);
      const q = g.queues[0];

      const data = randomBytes(8192);
      const wbuf = v.alloc.allocOrThrow(8192, 512);
      v.mem.write(wbuf, data);
      const st1 = request(v, q, VIRTIO_BLK_T_OUT, 16, { addr: wbuf, len: 8192 }, 1);
      g.kick(q);
      expect(await g.waitUsed(q)).toEqual([{ token: 1, len: 1 }]);
      expect(v.mem.readU8(st1)).toBe(0);

      const rbuf = v.alloc.allocOrThrow(8192, 512);
      const st2 = request(v, q, VIRTIO_BLK_T_IN, 16, { addr: rbuf, len: 8192 }, 2);
      g.kick(q);
      expect(await g.waitUsed(q)).toEqual([{ token: 2, len: 8193 }]);
      expect(v.mem.readU8(st2)).toBe(0);
      expect(Buffer.from(v.mem.slice(rbuf, 8192)).equals(data)).toBe(true);
      expect(readFileSync(img).subarray(16 * 512, 16 * 512 + 8192).equals(data)).toBe(true);

      // libvhost-user (qemu-storage-daemon) ignores the GET_CONFIG offset: always read from 0.
      const backendWce = () => a.links.get('_disk0')!.frontend.getConfig(0, 60)[BlkConfig.writeback];
      // WCE: the guest flips writeback; the main thread forwards it with SET_CONFIG.
      if (g.features & bits(VIRTIO_BLK_F_CONFIG_WCE)) {
        const before = g.config(BlkConfig.writeback, 1);
        g.writeConfig(BlkConfig.writeback, before ^ 1, 1);
        expect(g.config(BlkConfig.writeback, 1)).toBe(before ^ 1);
        expect(backendWce()).toBe(before ^ 1);
        // The same write from a vCPU thread goes through the config eventfd and the main loop, and the guest's write
        // returns only once the back-end has it: a guest that switched to writethrough sends no FLUSH for what follows.
        const vcpu = startTsWorker(new URL('./fixtures/config-writer.ts', import.meta.url),
          { spec: a.specs[0], offset: BlkConfig.writeback, bytes: [before] }, 'vcpu-config');
        let written = false;
        vcpu.once('message', () => (written = true));
        await new Promise((r) => setTimeout(r, 300));
        expect(written).toBe(false); // the main loop has not run: SET_CONFIG not sent yet
        for (let i = 0; i < 100 && !written; i++) {
          v.loop.poll(20);
          await new Promise((r) => setTimeout(r, 10));
        }
        expect(written).toBe(true);
        expect(backendWce()).toBe(before);
        await vcpu.terminate();
      }
      // Read-only fields stay as they are.
      g.writeConfig(BlkConfig.capacity, 1, 4);
      expect(g.config(BlkConfig.capacity, 4)).toBe((IMG_SIZE / 512) % 2 ** 32);

      // Guest reset stops the rings (GET_VRING_BASE); a new driver instance starts them again.
      g.reset();
      expect(a.links.get('_disk0')!.activeQueues).toEqual([]);
      g.enableMsix();
      g.start(want, [64]);
      const q2 = g.queues[0];
      const rbuf2 = v.alloc.allocOrThrow(4096, 512);
      const st3 = request(v, q2, VIRTIO_BLK_T_IN, 16, { addr: rbuf2, len: 4096 }, 3);
      g.kick(q2);
      expect(await g.waitUsed(q2)).toEqual([{ token: 3, len: 4097 }]);
      expect(v.mem.readU8(st3)).toBe(0);
      expect(Buffer.from(v.mem.slice(rbuf2, 4096)).equals(data.subarray(0, 4096))).toBe(true);
    }, 60_000);

    /** SIGKILLs the back-end and waits until it is gone (the main loop has not looked yet). */
    async function killChild(): Promise<void> {
      const dead = child!;
      const gone = new Promise<void>((r) => dead.once('exit', () => r()));
      dead.kill('SIGKILL');
      await gone;
    }

    /** Kills the back-end and lets the main loop see the hang-up (the link starts reconnecting). */
    async function killBackend(v: TestVm): Promise<void> {
      await killChild();
      await runLoop(v);
    }

    it('a back-end killed under the running guest is connected to again when it comes back: queued writes complete, writethrough stays', async () => {
      const { v, a, g } = await guestDisk();
      g.start(bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE), [128]);
      const q = g.queues[0];
      const link = a.links.get('_disk0')!;
      g.writeConfig(BlkConfig.writeback, 0, 1); // the guest wants writethrough
      writeBlock(v, q, 0, 0xa1, 1);
      g.kick(q);
      expect(await g.waitUsed(q)).toEqual([{ token: 1, len: 1 }]);

      await killChild();
      // Queued (and kicked) while no back-end is there.
      const st = writeBlock(v, q, 8, 0xb2, 2);
      g.kick(q);
      await runLoop(v);
      child = await b.start(img, sock);
      const used = await g.waitUsed(q, 1, 20_000);
      expect(used).toEqual([{ token: 2, len: 1 }]);
      expect(v.mem.readU8(st)).toBe(0);
      const disk0 = readFileSync(img);
      expect(disk0[0]).toBe(0xa1);
      expect(disk0[8 * 512]).toBe(0xb2);
      // The new back-end got the guest's cache mode, not its own default.
      expect(link.frontend.getConfig(0, 60)[BlkConfig.writeback]).toBe(0);
      writeBlock(v, q, 16, 0xc3, 3);
      g.kick(q);
      expect(await g.waitUsed(q)).toEqual([{ token: 3, len: 1 }]);
    }, 60_000);

    it('a listener that takes the connection but never answers does not hold up the main thread; the real back-end is connected to after it', async () => {
      const { v, a } = await attachDisk({ retryForMs: 5000, reconnectForMs: 20_000, replyTimeoutMs: 2000 });
      v.build(vhostUserDevices(a.specs, a.links));
      const g = new GuestDriver(v, 0);
      g.enableMsix();
      g.start(bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX), [128]);
      const q = g.queues[0];
      writeBlock(v, q, 0, 0xa1, 1);
      g.kick(q);
      expect(await g.waitUsed(q)).toEqual([{ token: 1, len: 1 }]);

      await killChild();
      rmSync(sock, { force: true });
      // A stopped or hung back-end: the kernel completes the connection, nobody ever answers.
      const mute = spawn(process.execPath, ['-e', `require('net').createServer(() => {}).listen(${JSON.stringify(sock)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await once(mute.stdout!, 'data');
        const st = writeBlock(v, q, 8, 0xb2, 2);
        g.kick(q);
        // ~3 s: longer than one attempt's reply timeout, during which a blocking negotiation would stall everything.
        let worst = 0;
        let last = performance.now();
        for (let i = 0; i < 150; i++) {
          v.loop.poll(0);
          await new Promise((r) => setTimeout(r, 20));
          const now = performance.now();
          worst = Math.max(worst, now - last);
          last = now;
        }
        expect(worst).toBeLessThan(1000);
        mute.kill('SIGKILL');
        await once(mute, 'exit');
        rmSync(sock, { force: true });
        child = await b.start(img, sock);
        expect(await g.waitUsed(q, 1, 20_000)).toEqual([{ token: 2, len: 1 }]);
        expect(v.mem.readU8(st)).toBe(0);
        expect(readFileSync(img)[8 * 512]).toBe(0xb2);
      } finally {
        mute.kill('SIGKILL');
      }
    }, 60_000);

    it('a guest that resets and starts the device again while its back-end is away gets a working disk once it is back', async () => {
      const { v, a, g } = await guestDisk();
      const want = bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE);
      g.start(want, [128]);
      await killBackend(v);
      // A reboot (or driver reload) meanwhile: reset, then DRIVER_OK with new rings.
      g.reset();
      g.enableMsix();
      g.start(want, [128]);
      expect(g.r(0x14, 1) & 0x40).toBe(0); // no DEVICE_NEEDS_RESET
      const q = g.queues[0];
      const st = writeBlock(v, q, 24, 0xd4, 7);
      g.kick(q);
      child = await b.start(img, sock);
      expect(await g.waitUsed(q, 1, 20_000)).toEqual([{ token: 7, len: 1 }]);
      expect(v.mem.readU8(st)).toBe(0);
      expect(readFileSync(img)[24 * 512]).toBe(0xd4);
      expect(g.r(0x14, 1) & 0x40).toBe(0);
    }, 60_000);

    it('a back-end that dies just before the guest starts the device (hang-up not yet seen) does not leave the disk dead', async () => {
      const { v, a, g } = await guestDisk();
      const want = bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE);
      g.start(want, [128]);
      await killChild();
      // The main loop has not looked at the socket yet: the activation is the first to find the back-end gone.
      g.reset();
      g.enableMsix();
      g.start(want, [128]);
      expect(g.r(0x14, 1) & 0x40).toBe(0);
      const q = g.queues[0];
      const st = writeBlock(v, q, 32, 0xe5, 9);
      g.kick(q);
      child = await b.start(img, sock);
      await runLoop(v);
      expect(await g.waitUsed(q, 1, 20_000)).toEqual([{ token: 9, len: 1 }]);
      expect(v.mem.readU8(st)).toBe(0);
      expect(readFileSync(img)[32 * 512]).toBe(0xe5);
    }, 60_000);

    // qemu-storage-daemon offers SIZE_MAX, which kumo-vhost-user-blk does not: a restart onto kumo offers the guest less.
    if (b.name === 'qemu-storage-daemon') it('a back-end restarted as one offering less than the guest was offered is refused, even with the device stopped', async () => {
      const { v, a, g } = await guestDisk();
      expect(a.specs[0].features & bits(VIRTIO_BLK_F_SIZE_MAX)).not.toBe(0n);
      const want = bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SIZE_MAX);
      g.start(want, [128]);
      g.reset();
      const link = a.links.get('_disk0')!;
      const old = link.frontend;
      await killBackend(v);
      child = await backends[0].start(img, sock);
      for (let i = 0; i < 300; i++) {
        v.loop.poll(0);
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(link.frontend).toBe(old); // not adopted
      // The next driver start is told the device needs a reset, instead of running without SIZE_MAX it acked.
      g.enableMsix();
      g.start(want, [128]);
      v.pump();
      expect(g.r(0x14, 1) & 0x40).toBe(0x40);
    }, 60_000);

    // Only kumo-vhost-user-blk takes a queue_size to restart with (qemu-storage-daemon's rings are always up to 1024).
    if (b.name === 'kumo-vhost-user-blk') it('a restarted back-end that hangs up on the set-up (smaller queue_size) is given up once, not reconnected to every second', async () => {
      const { v, a, g } = await guestDisk();
      g.start(bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH), [128]);
      const link = a.links.get('_disk0')!;
      await killBackend(v);
      // Rings of 128 do not fit its queues of 64: it closes the connection at SET_VRING_NUM (or SET_INFLIGHT_FD).
      child = await startProcess(process.execPath, [KUMO_BLK, '--block-backend', `path=${img},socket=${sock},num_queues=1,queue_size=64`], sock);
      const seen = new Set<unknown>([link.frontend]);
      for (let i = 0; i < 400; i++) {
        v.loop.poll(0);
        seen.add(link.frontend);
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(seen.size).toBe(2); // the one it gave up on, and no more
      expect(() => link.frontend.getFeatures()).toThrow(); // and that connection is closed
    }, 60_000);

    it('a back-end that comes back while the device is stopped gets the guest\'s config writes (writethrough)', async () => {
      const { v, a, g } = await guestDisk();
      const want = bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE);
      g.start(want, [128]);
      const link = a.links.get('_disk0')!;
      g.writeConfig(BlkConfig.writeback, 0, 1); // writethrough
      expect(link.frontend.getConfig(0, 60)[BlkConfig.writeback]).toBe(0);
      g.reset(); // the guest keeps reading writeback=0 from the config space; it will not write it again
      const old = link.frontend;
      await killBackend(v);
      child = await b.start(img, sock);
      for (let i = 0; i < 1000 && link.frontend === old; i++) await new Promise((r) => setTimeout(r, 10));
      expect(link.frontend).not.toBe(old);
      expect(g.config(BlkConfig.writeback, 1)).toBe(0);
      expect(link.frontend.getConfig(0, 60)[BlkConfig.writeback]).toBe(0);
    }, 60_000);
  });
}
