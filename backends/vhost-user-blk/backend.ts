import { statSync } from 'node:fs';
import type { VhostUserBackend } from '../../protocol/vhost-user/backend-types.js';
import {
  bits, hasFeature, BlkConfig, BLK_CONFIG_SIZE, VIRTIO_BLK_ID_BYTES,
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VHOST_F_LOG_ALL,
  VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_F_RO,
} from '../../protocol/virtio/index.js';
import { KumoError } from '../../protocol/errors.js';
import { WarnLimiter, type Logger } from '../../protocol/log.js';
import type { DiskImage } from './image.js';
import { IMAGE_FLAGS_LENGTH } from './bounce.js';
import { BlkLimits } from './limits.js';
import type { CompletionMode } from './engine.js';
import type { BlkWorkerData } from './worker-data.js';
import { ProtocolFeature } from '../../protocol/vhost-user/messages.js';
import { siblingWorkerModule } from '../../protocol/vhost-user/worker-module.js';

export class BlkConfigWriteError extends KumoError {}

export interface BlkBackendOptions {
  numQueues: number;
  queueSize: number;
  pollQueue: boolean;
  pollUs?: number;
  completion?: CompletionMode;
  log?: Logger;
}

/**
 * Cloud Hypervisor's serial (kvmtool's device id): st_dev, st_rdev and st_ino of the image in decimal, one after
 * the other, cut or NUL-padded to 20 bytes; all NULs when the image cannot be stat'ed. Distinct images get distinct
 * serials (the guest's /dev/disk/by-id names), and the host path stays private.
 */
export function serialFor(path: string): Uint8Array {
  const out = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch {
    return out;
  }
  out.set(Buffer.from(`${st.dev}${st.rdev}${st.ino}`, 'ascii').subarray(0, VIRTIO_BLK_ID_BYTES));
  return out;
}

const NO_CHOICE = 0xff;

/** The virtio-blk device model of the backend (main thread): features, config space, WCE. */
export class BlkBackend implements VhostUserBackend {
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly queueWorker: { module: string; data: BlkWorkerData };
  readonly queuesPerWorker = 1;
  private readonly config = new Uint8Array(BLK_CONFIG_SIZE);
  private readonly cfgView = new DataView(this.config.buffer);
  /** Shared with the workers: [0] = writethrough, [1] = queues being served, then the O_DIRECT WriteGate (see BlkEngineImage.flags). */
  private readonly flags: Int32Array;
  private acked = 0n;
  /**
   * What a driver wrote to writeback (CONFIG_WCE) since the device was last reset, or null. It outlives the
   * connection: QEMU reconnecting (or a local migration's new front-end) restores features, memory and rings but never
   * writes the config again, and the guest still believes in the cache mode it chose (qemu-storage-daemon keeps it).
   */
  private writebackChoice: number | null = null;
  /** A guest toggles writeback as often as it likes (a loop over cache_type): its cache-mode lines are rate-limited. */
  private readonly guestInfo: WarnLimiter | null;

  constructor(private readonly image: DiskImage, private readonly opts: BlkBackendOptions) {
    this.numQueues = opts.numQueues;
    this.maxQueueSize = opts.queueSize;
    this.guestInfo = opts.log ? new WarnLimiter(opts.log) : null;
    const sab = new SharedArrayBuffer(IMAGE_FLAGS_LENGTH * 4);
    this.flags = new Int32Array(sab);
    this.buildConfig();
    this.queueWorker = {
      module: siblingWorkerModule(import.meta.url, 'worker'),
      data: {
        fd: image.fd,
        size: image.size,
        readonly: image.readonly,
        memoryBacked: image.memoryBacked,
        writesPunted: image.writesPunted,
        alignment: image.alignment,
        logicalBlock: image.logicalBlock,
        blockDevice: image.isBlockDevice,
        serial: serialFor(image.path),
        flags: sab,
        queueSize: opts.queueSize,
        pollQueue: opts.pollQueue,
        pollUs: opts.pollUs ?? 50,
        completion: opts.completion ?? 'eventfd',
      },
    };
    this.updateWritethrough();
  }

  features(): bigint {
    let f = bits(
      VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
      VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY,
      VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
    );
    if (this.image.readonly) f |= bits(VIRTIO_BLK_F_RO);
    // Dirty logging, so that QEMU and Cloud Hypervisor can live-migrate the guest (with LOG_SHMFD).
    return f | bits(VHOST_F_LOG_ALL);
  }

  protocolFeatures(): bigint {
    // INFLIGHT_SHMFD: QEMU (chardev reconnect=on) and Cloud Hypervisor reconnect to a restarted back-end, which then
    // resubmits what the killed one had in flight, in whatever order completions had come.
    return bits(
      ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.INFLIGHT_SHMFD,
      ProtocolFeature.LOG_SHMFD,
    );
  }

  getConfig(offset: number, size: number): Uint8Array {
    const out = new Uint8Array(Math.max(0, size));
    if (offset < this.config.length && size > 0) out.set(this.config.subarray(offset, Math.min(this.config.length, offset + size)));
    return out;
  }

  /** Only the writeback byte (CONFIG_WCE) is writable. */
  setConfig(offset: number, data: Uint8Array): void {
    if (offset !== BlkConfig.writeback || data.length !== 1) {
      throw new BlkConfigWriteError('only the virtio-blk writeback field can be written', { offset, size: data.length });
    }
    if (data[0] > 1) throw new BlkConfigWriteError('writeback must be 0 or 1', { value: data[0] });
    // A driver without FLUSH could never make writeback writes durable: it stays writethrough. Before any SET_FEATURES
    // the features are not known yet: front-ends send them only at DRIVER_OK, and a driver may write writeback once
    // it has FEATURES_OK (FreeBSD's vtblk does, at attach): its choice is kept for the SET_FEATURES to come.
    const flush = hasFeature(this.acked, VIRTIO_BLK_F_FLUSH);
    const keep = flush || this.acked === 0n;
    const wb = keep ? data[0] : 0;
    this.config[BlkConfig.writeback] = wb;
    if (keep) this.writebackChoice = wb;
    this.guestInfo?.info({ writeback: wb, asked: data[0] }, 'cache mode changed');
    this.updateWritethrough();
  }

  ackFeatures(features: bigint): void {
    this.acked = features;
    // virtio 1.2 §5.2.5: writeback MUST be 0 with CONFIG_WCE but no FLUSH. With FLUSH it keeps what the driver
    // wrote: front-ends send SET_FEATURES again at every start (QEMU's stop/cont), and a guest that chose
    // writethrough sends no FLUSH.
    this.applyChoice();
  }

  /** The writeback field under the acked features: the driver's choice (default 1) with FLUSH, 0 without. */
  private applyChoice(): void {
    this.config[BlkConfig.writeback] = hasFeature(this.acked, VIRTIO_BLK_F_FLUSH) ? this.writebackChoice ?? 1 : 0;
    this.updateWritethrough();
  }

  /** RESET_OWNER/RESET_DEVICE: writeback back to its default (1), until a driver writes it. */
  reset(): void {
    this.writebackChoice = null;
    this.config[BlkConfig.writeback] = 1;
    this.acked = 0n;
    this.updateWritethrough();
  }

  /** The driver's writeback choice (0xff: none), kept in the front-end's inflight buffer across back-end restarts. */
  saveState(): Uint8Array {
    return Uint8Array.of(this.writebackChoice ?? NO_CHOICE);
  }

  /**
   * A restarted back-end under QEMU's reconnect: the guest still believes the cache mode it chose, and a guest that
   * chose writethrough sends no FLUSH, so forgetting its choice would ack writes that are not durable.
   */
  restoreState(saved: Uint8Array): void {
    const v = saved.length === 1 ? saved[0] : -1;
    if (v !== 0 && v !== 1 && v !== NO_CHOICE) throw new BlkConfigWriteError('saved device state is not a writeback choice', { bytes: saved.length, value: v });
    this.writebackChoice = v === NO_CHOICE ? null : v;
    if (this.acked !== 0n) this.applyChoice();
    if (this.writebackChoice !== null) this.guestInfo?.info({ writeback: this.writebackChoice }, 'cache mode restored from the inflight buffer');
  }

  /** virtio 1.2 §5.2.6: writeback follows WCE if negotiated, else FLUSH; without FLUSH, always writethrough. */
  private updateWritethrough(): void {
    const wb = hasFeature(this.acked, VIRTIO_BLK_F_FLUSH)
      && (!hasFeature(this.acked, VIRTIO_BLK_F_CONFIG_WCE) || this.config[BlkConfig.writeback] === 1);
    Atomics.store(this.flags, 0, wb ? 0 : 1);
  }

  /** True while writes complete only once durable (tests, logs). */
  get writethrough(): boolean {
    return Atomics.load(this.flags, 0) === 1;
  }

  private buildConfig(): void {
    const v = this.cfgView;
    const sectors = this.image.sectors;
    v.setUint32(BlkConfig.capacity, sectors % 0x1_0000_0000, true);
    v.setUint32(BlkConfig.capacity + 4, Math.floor(sectors / 0x1_0000_0000), true);
    v.setUint32(BlkConfig.size_max, BlkLimits.sizeMax, true);
    v.setUint32(BlkConfig.seg_max, BlkLimits.segMax, true);
    v.setUint32(BlkConfig.blk_size, 512, true);
    // Sectors stay 512 bytes (a guest's partition tables count in them); a device with larger blocks (its
    // O_DIRECT alignment, or a block device's logical block) is announced as the physical block, so guests
    // align to it and few writes need patching, and discards to it (fallocate takes whole blocks).
    const block = Math.max(this.image.alignment ?? 0, this.image.logicalBlock ?? 0);
    const perBlock = block > 512 ? block / 512 : 1;
    v.setUint8(BlkConfig.physical_block_exp, Math.log2(perBlock));
    v.setUint8(BlkConfig.alignment_offset, 0);
    v.setUint16(BlkConfig.min_io_size, perBlock, true);
    v.setUint32(BlkConfig.opt_io_size, perBlock, true); // as Cloud Hypervisor (1 for 512-byte blocks)
    v.setUint8(BlkConfig.writeback, 1);
    v.setUint16(BlkConfig.num_queues, this.opts.numQueues, true);
    v.setUint32(BlkConfig.max_discard_sectors, BlkLimits.maxDiscardSectors, true);
    v.setUint32(BlkConfig.max_discard_seg, BlkLimits.maxDiscardSeg, true);
    v.setUint32(BlkConfig.discard_sector_alignment, perBlock, true);
    v.setUint32(BlkConfig.max_write_zeroes_sectors, BlkLimits.maxWriteZeroesSectors, true);
    v.setUint32(BlkConfig.max_write_zeroes_seg, BlkLimits.maxWriteZeroesSeg, true);
    v.setUint8(BlkConfig.write_zeroes_may_unmap, 1);
  }
}
