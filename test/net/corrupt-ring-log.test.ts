// A guest that corrupts its TX ring again after every restart (a reset of its NIC in a loop): one error line with a
// stack per restart, unbounded, some 200 lines a second here. Rate-limited now.
import { expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { BackendProc, backendBin } from './harness.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import { GuestMemory } from '../../protocol/memory/index.js';
import { compactLayout } from '../../protocol/virtqueue/index.js';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import { bits, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/index.js';

const why = netnsUnavailable();

it.skipIf(why !== null)('a TX ring corrupted after every restart is logged rate-limited', async () => {
  const ns = NetNs.create('corruptlog');
  const sock = `/tmp/kumo-net-corruptlog-${process.pid}.sock`;
  const be = new BackendProc(ns.spawn(process.execPath, [backendBin, '--net-backend', `ip=10.79.9.1,mask=255.255.255.0,socket=${sock}`], { env: { ...process.env, KUMO_LOG: 'info' } }));
  const fds = [eventfd(), eventfd(), eventfd(), eventfd()];
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
  try {
    expect(JSON.parse(await be.nextLine(30_000))).toMatchObject({ ready: true });
    const fe = await VhostUserFrontend.connect(sock, { retryForMs: 5000 });
    fe.negotiate(bits(VIRTIO_F_VERSION_1), protocolFeatures(ProtocolFeature.REPLY_ACK));
    fe.setMemTable(mem);
    const rx = compactLayout(0x1000, 64);
    const tx = compactLayout(0x8000, 64);
    fe.setupVring(0, mem, rx, fds[0], fds[1]);
    fe.setupVring(1, mem, tx, fds[2], fds[3]);
    for (let i = 0; i < 300; i++) {
      mem.writeU16(tx.availAddr + 2, 1000); // 1000 ahead of a 64-entry ring
      eventfdWrite(fds[2]);
      await new Promise((r) => setTimeout(r, 2));
      fe.getVringBase(1); // the driver resets the device and starts the ring again
      mem.writeU16(tx.availAddr + 2, 0);
      mem.writeU16(tx.usedAddr + 2, 0);
      fe.setupVring(1, mem, tx, fds[2], fds[3], 0);
    }
    fe.close();
    await new Promise((r) => setTimeout(r, 300));
    const lines = be.stderr.match(/virtqueue is corrupt/g)?.length ?? 0;
    expect(lines).toBeGreaterThan(0);
    expect(lines).toBeLessThan(150); // one per restart (300) without the limiter
  } finally {
    await be.stop();
    ns.delete();
    fds.forEach(closeQuiet);
    mem.close();
  }
}, 60_000);
