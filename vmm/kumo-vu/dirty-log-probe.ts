// Checks a back-end's live-migration support from the front-end's side: with VHOST_F_LOG_ALL and LOG_SHMFD it must
// mark, in the log the front-end hands it, every guest page it writes (QEMU's and Cloud Hypervisor's order of setup).
import { closeQuiet } from '../../protocol/sys/fd.js';
import { ftruncate, mapFd, memfdCreate, MFD_ALLOW_SEALING, MFD_CLOEXEC, type Mapping } from '../../protocol/sys/mem.js';
import { F_LOG_ALL, guestToUser, hasProtocolFeature, ProtocolFeature } from '../../protocol/vhost-user/index.js';
import { DIRTY_LOG_PAGE } from '../../protocol/virtqueue/index.js';
import type { VuDevice } from './device.js';

/** VRING_F_LOG in SET_VRING_ADDR: the used ring is logged at the given guest address. */
const VRING_F_LOG = 1;

export class DirtyLogProbe {
  private constructor(
    private readonly dev: VuDevice,
    private readonly fd: number,
    private readonly map: Mapping,
  ) {}

  /** Whether the back-end offers what a migrating front-end needs. */
  static offered(dev: VuDevice): boolean {
    return (dev.offered & F_LOG_ALL) !== 0n && hasProtocolFeature(dev.protocolFeatures, ProtocolFeature.LOG_SHMFD);
  }

  /** Starts logging on the running device: SET_LOG_BASE, SET_FEATURES with LOG_ALL, then each ring's log address. */
  static start(dev: VuDevice): DirtyLogProbe {
    const mem = dev.mem;
    if (mem === null) throw new Error('device not started');
    const end = Math.max(...mem.regions.map((r) => r.guestAddr + r.size));
    const size = Math.ceil(end / DIRTY_LOG_PAGE / 8);
    const fd = memfdCreate('kumo-vu-dirty-log', MFD_CLOEXEC | MFD_ALLOW_SEALING);
    let map: Mapping;
    try {
      ftruncate(fd, size);
      map = mapFd(fd, size);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
    const probe = new DirtyLogProbe(dev, fd, map);
    const fe = dev.frontend;
    fe.setLogBase(fd, size);
    fe.setFeatures(dev.features | F_LOG_ALL);
    for (const q of dev.queues) {
      const l = q.dq.layout;
      const user = (gpa: number) => guestToUser(mem, gpa);
      fe.setVringAddr(q.index, { desc: user(l.descAddr), avail: user(l.availAddr), used: user(l.usedAddr), flags: VRING_F_LOG, log: l.usedAddr });
    }
    // Without REPLY_ACK nothing above is answered: a reply to a later request says the back-end has taken them all.
    fe.getFeatures();
    return probe;
  }

  /** Whether the page holding `gpa` is marked. */
  marked(gpa: number): boolean {
    const page = Math.floor(gpa / DIRTY_LOG_PAGE);
    return (this.map.bytes[Math.floor(page / 8)] & (1 << (page % 8))) !== 0;
  }

  /** Clears every bit (what a front-end does as it collects them). */
  clear(): void {
    this.map.bytes.fill(0);
  }

  /** Turns logging off (SET_FEATURES without LOG_ALL) and releases the log. */
  stop(): void {
    try {
      this.dev.frontend.setFeatures(this.dev.features);
      this.dev.frontend.getFeatures();
    } finally {
      this.map.unmap();
      closeQuiet(this.fd);
    }
  }
}
