// A guest that corrupts a ring again after every restart (a device reset in a loop), driven through a raw front-end.
import { GuestMemory } from '../../protocol/memory/index.js';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import { compactLayout } from '../../protocol/virtqueue/index.js';
import { bits, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/index.js';

/**
 * Connects to `sock`, sets up rings 0 and 1 (64 entries each), then `times` over makes ring 1's avail index run 1000
 * ahead of the ring, kicks it, and stops and starts it again as a driver resetting its device does.
 */
export async function corruptRingAfterEachRestart(sock: string, times: number): Promise<void> {
  const fds = [eventfd(), eventfd(), eventfd(), eventfd()];
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
  try {
    const fe = await VhostUserFrontend.connect(sock, { retryForMs: 10_000 });
    fe.negotiate(bits(VIRTIO_F_VERSION_1), protocolFeatures(ProtocolFeature.REPLY_ACK));
    fe.setMemTable(mem);
    const r0 = compactLayout(0x1000, 64);
    const r1 = compactLayout(0x8000, 64);
    fe.setupVring(0, mem, r0, fds[0], fds[1]);
    fe.setupVring(1, mem, r1, fds[2], fds[3]);
    for (let i = 0; i < times; i++) {
      mem.writeU16(r1.availAddr + 2, 1000);
      eventfdWrite(fds[2]);
      await new Promise((r) => setTimeout(r, 2));
      fe.getVringBase(1);
      mem.writeU16(r1.availAddr + 2, 0);
      mem.writeU16(r1.usedAddr + 2, 0);
      fe.setupVring(1, mem, r1, fds[2], fds[3], 0);
    }
    fe.close();
  } finally {
    fds.forEach(closeQuiet);
    mem.close();
  }
}
