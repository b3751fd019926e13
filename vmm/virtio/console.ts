import { logger, WarnLimiter } from '../../protocol/log.js';
import { VIRTIO_ID_CONSOLE } from '../../protocol/virtio/ids.js';
import { readFromChain, writeToChain } from '../../protocol/virtqueue/index.js';
import type { OutputSink } from '../devices/types.js';
import type { ActivateContext, VirtioDevice } from './device.js';
import { QueueRunner } from './queue-runner.js';

const log = logger('virtio-console');
/** Lines a guest causes at will (it may loop on them): rate-limited. */
const guestLog = new WarnLimiter(log);
const F_EMERG_WRITE = 1n << 2n;
const RX = 0;
const TX = 1;
const MAX_PENDING = 1 << 20;
const TX_CHUNK = 64 << 10;

/** virtio-console, single port (no MULTIPORT): queue 0 receiveq ← input(), queue 1 transmitq → sink. */
export class VirtioConsole implements VirtioDevice {
  readonly name = 'console';
  readonly deviceType = VIRTIO_ID_CONSOLE;
  readonly queueMaxSizes = [256, 256];
  private acked = 0n;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private rx: QueueRunner | null = null;
  private tx: QueueRunner | null = null;
  private ctx: ActivateContext | null = null;

  constructor(private readonly output: OutputSink | null) {}

  features(): bigint {
    return F_EMERG_WRITE;
  }

  ackFeatures(f: bigint): void {
    this.acked = f;
  }

  /** config: cols u16, rows u16, max_nr_ports u32, emerg_wr u32. */
  readConfig(offset: number, data: Uint8Array): void {
    const cfg = new Uint8Array(12);
    cfg[4] = 1;
    for (let i = 0; i < data.length; i++) data[i] = cfg[offset + i] ?? 0;
  }

  /** emerg_wr: one byte out, at any time (virtio 1.x 5.3.5: offered is enough, before FEATURES_OK too). */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset === 8 && this.output) this.output(data.slice(0, 1));
  }

  /** Host → guest bytes (main thread); queued while the guest has no rx buffers. Returns false if dropped. */
  input(data: Uint8Array): boolean {
    if (this.pendingBytes + data.length > MAX_PENDING) return false;
    this.pending.push(data.slice());
    this.pendingBytes += data.length;
    this.rx?.run();
    return true;
  }

  activate(ctx: ActivateContext): void {
    this.reset();
    this.ctx = ctx;
    for (const q of ctx.queues) {
      if (q.index === RX) {
        this.rx = new QueueRunner(ctx.memory, q, false, (chain, mem) => {
          if (this.pendingBytes === 0) return null;
          let written = 0;
          while (this.pending.length > 0 && written < chain.writableLength) {
            const head = this.pending[0];
            const n = writeToChain(mem, chain.writable, written, head);
            written += n;
            this.pendingBytes -= n;
            if (n === head.length) this.pending.shift();
            else this.pending[0] = head.subarray(n);
          }
          return written;
        }, this.name, ctx.failed);
        this.rx.listen(ctx.loop);
      } else if (q.index === TX) {
        this.tx = new QueueRunner(ctx.memory, q, false, (chain, mem) => {
          // Chunked: the guest picks the length, so never allocate it whole.
          for (let off = 0; off < chain.readableLength; off += TX_CHUNK) {
            const buf = new Uint8Array(Math.min(TX_CHUNK, chain.readableLength - off));
            readFromChain(mem, chain.readable, off, buf);
            this.output?.(buf);
          }
          return 0;
        }, this.name, ctx.failed);
        this.tx.listen(ctx.loop);
      }
    }
    this.tx?.run();
    this.rx?.run();
    guestLog.info({ queues: ctx.queues.length }, 'activated');
  }

  reset(): void {
    if (this.ctx) {
      this.rx?.unlisten(this.ctx.loop);
      this.tx?.unlisten(this.ctx.loop);
    }
    this.rx = null;
    this.tx = null;
    this.ctx = null;
  }
}
