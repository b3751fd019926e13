import { logger, WarnLimiter } from '../../protocol/log.js';
import { closeQuiet, O_CLOEXEC, O_RDONLY, openFile, read } from '../../protocol/sys/fd.js';
import { VIRTIO_ID_RNG } from '../../protocol/virtio/ids.js';
import { VIRTIO_RING_F_EVENT_IDX } from '../../protocol/virtio/features.js';
import type { ActivateContext, VirtioDevice } from './device.js';
import { QueueRunner } from './queue-runner.js';

const log = logger('virtio-rng');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);
/**
 * Bytes one request gets at most: the spec lets the device fill less than the buffer, a driver asks for a page or less,
 * and one 4 GiB chain would otherwise hold the VMM's main thread for seconds.
 */
const MAX_FILL = 64 << 10;
const EVENT_IDX = 1n << BigInt(VIRTIO_RING_F_EVENT_IDX);

/** virtio-rng: one request queue; each writable buffer is filled from the entropy source (default /dev/urandom). */
export class VirtioRng implements VirtioDevice {
  readonly name = 'rng';
  readonly deviceType = VIRTIO_ID_RNG;
  readonly queueMaxSizes = [256];
  private acked = 0n;
  private fd = -1;
  private runner: QueueRunner | null = null;
  private ctx: ActivateContext | null = null;

  constructor(private readonly source = '/dev/urandom') {}

  features(): bigint {
    return EVENT_IDX;
  }

  ackFeatures(f: bigint): void {
    this.acked = f;
  }

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  writeConfig(): void {}

  activate(ctx: ActivateContext): void {
    this.reset();
    const q = ctx.queues.find((x) => x.index === 0);
    if (!q) return;
    this.fd = openFile(this.source, O_RDONLY | O_CLOEXEC);
    this.ctx = ctx;
    this.runner = new QueueRunner(ctx.memory, q, (this.acked & EVENT_IDX) !== 0n, (chain, mem) => {
      let total = 0;
      for (const seg of chain.writable) {
        let off = 0;
        while (off < seg.len && total < MAX_FILL) {
          const n = Math.min(seg.len - off, MAX_FILL - total);
          const got = read(this.fd, mem.slice(seg.addr + off, n));
          if (got <= 0) return total; // source dry: hand back what we have
          off += got;
          total += got;
        }
      }
      return total;
    }, this.name, ctx.failed);
    this.runner.listen(ctx.loop);
    this.runner.run();
    guestLog.info({ size: q.layout.size }, 'activated');
  }

  reset(): void {
    if (this.runner && this.ctx) this.runner.unlisten(this.ctx.loop);
    this.runner = null;
    this.ctx = null;
    if (this.fd >= 0) closeQuiet(this.fd);
    this.fd = -1;
  }
}
