// vhost_mode=server: kumo listens, kumo-vhost-user-net (client=on) dials in. The guest driver sends an
// ARP request for the TAP's address on TX and receives the host kernel's reply on RX; a back-end killed and
// started again dials in anew and the device goes on.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../protocol/virtio/features.js';
import { VIRTIO_NET_F_MAC } from '../../protocol/virtio/net.js';
import { NetConfig } from '../../vmm/config/net.js';
import { MemoryConfig } from '../../vmm/config/memory.js';
import { validateVhostUserDevices } from '../../vmm/config/vhost-user-devices.js';
import { attachVhostUserDevices, vhostUserDevices, type VhostUserAttachment } from '../../vmm/vhost-user/index.js';
import { GuestDriver, MiB, stopProcess, TestVm } from './harness.js';

const KUMO_NET = new URL('../../bin/kumo-vhost-user-net.js', import.meta.url).pathname;
const GUEST_MAC = '52:54:00:12:34:56';
const HOST_IP = [10, 213, 77, 1];
const GUEST_IP = [10, 213, 77, 2];
const canTap = existsSync('/dev/net/tun') && process.getuid?.() === 0;

function arpRequest(): Uint8Array {
  const mac = GUEST_MAC.split(':').map((h) => parseInt(h, 16));
  return Uint8Array.from([
    ...new Array(12).fill(0), // virtio_net_hdr (VERSION_1: 12 bytes)
    ...new Array(6).fill(0xff), ...mac, 0x08, 0x06,
    0, 1, 0x08, 0, 6, 4, 0, 1, ...mac, ...GUEST_IP, 0, 0, 0, 0, 0, 0, ...HOST_IP,
  ]);
}

describe.skipIf(!canTap)('vhost-user-net in vhost_mode=server through the virtio-pci model', () => {
  let dir = '';
  let child: ChildProcess | null = null;
  let att: VhostUserAttachment | null = null;
  let vm: TestVm | null = null;
  afterEach(async () => {
    att?.close();
    vm?.close();
    await stopProcess(child);
    child = null;
    att = null;
    vm = null;
    rmSync(dir, { recursive: true, force: true });
  });

  it('the backend connects to kumo; ARP request out on TX, reply in on RX; again after the back-end is killed and dials in anew', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vmm-net-'));
    const sock = join(dir, 'net.sock');
    const net = NetConfig.parse(`vhost_user=on,socket=${sock},vhost_mode=server,mac=${GUEST_MAC}`);
    const devices = { disks: [], net: [net], fs: [] };
    validateVhostUserDevices(devices, new MemoryConfig(512 * MiB, true));
    vm = new TestVm();
    const v = vm;
    const attaching = attachVhostUserDevices(devices, v.callFd, { retryForMs: 30_000 });
    for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 20));
    let err = '';
    const startBackend = () => {
      const c = spawn(process.execPath, [KUMO_NET, '--net-backend', `ip=${HOST_IP.join('.')},mask=255.255.255.0,socket=${sock},client=on,tap=kvmmvu0`], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, KUMO_LOG: 'warn' },
      });
      c.stderr?.on('data', (d: Buffer) => (err += d.toString()));
      return c;
    };
    child = startBackend();
    try {
      att = await attaching;
    } catch (e) {
      throw new Error(`${String(e)}; backend: ${err}`);
    }
    v.build(vhostUserDevices(att.specs, att.links));
    const g = new GuestDriver(v, 0);
    expect(g.deviceFeatures() & bits(VIRTIO_NET_F_MAC)).not.toBe(0n);
    expect(Array.from(g.configBytes(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':')).toBe(GUEST_MAC);
    g.enableMsix();
    g.start(bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_NET_F_MAC), [256, 256]);
    const [rx, tx] = g.queues;
    let token = 0;
    const rxBufs = new Map<number, number>();
    const giveRx = (n: number) => {
      for (let i = 0; i < n; i++) {
        const b = v.alloc.allocOrThrow(2048, 64);
        rxBufs.set(token, b);
        rx.dq.add([], [{ addr: b, len: 2048 }], token++);
      }
      rx.dq.publish();
      g.kick(rx);
    };
    const frame = arpRequest();
    const t = v.alloc.allocOrThrow(frame.length, 64);
    v.mem.write(t, frame);
    // The TAP may take a moment to come up: resend the request until a reply arrives.
    const arp = async (): Promise<Uint8Array | null> => {
      let reply: Uint8Array | null = null;
      for (let attempt = 0; attempt < 20 && reply === null; attempt++) {
        tx.dq.add([{ addr: t, len: frame.length }], [], 1000 + token++);
        tx.dq.publish();
        g.kick(tx);
        await g.waitUsed(tx);
        const deadline = Date.now() + 500;
        while (reply === null && Date.now() < deadline) {
          for (const u of rx.dq.takeUsed()) {
            const f = v.mem.slice(rxBufs.get(u.token)!, u.len).slice(12);
            if (f[12] === 0x08 && f[13] === 0x06 && f[21] === 2) reply = f; // ARP reply
          }
          await new Promise((r) => setTimeout(r, 10));
        }
      }
      return reply;
    };
    giveRx(8);
    const reply = await arp();
    expect(reply).not.toBeNull();
    expect(Array.from(reply!.subarray(28, 32))).toEqual(HOST_IP); // sender IP
    expect(Array.from(reply!.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':')).toBe(GUEST_MAC);

    // The back-end is killed and started again: kumo listens again, the new one dials in, and traffic goes on.
    const dead = child;
    const gone = new Promise<void>((r) => dead.once('exit', () => r()));
    dead.kill('SIGKILL');
    await gone;
    for (let i = 0; i < 100 && !existsSync(sock); i++) {
      v.loop.poll(10); // the main loop sees the hang-up and listens again
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(existsSync(sock)).toBe(true);
    child = startBackend();
    giveRx(8);
    const again = await arp();
    expect(again, `no ARP reply after the back-end came back; backend: ${err}`).not.toBeNull();
  }, 90_000);
});
