import { fstatSync, readSync, writeSync } from 'node:fs';
import { closeQuiet, dup } from '../sys/fd.js';
import { F_SEAL_GROW, ftruncate, memfdCreate, MFD_ALLOW_SEALING, MFD_CLOEXEC, sealAgainstShrink } from '../sys/mem.js';
import { inflightRegionSize, isQueueSize } from '../virtqueue/index.js';
import { VhostUserError, VhostUserProtocolError } from './errors.js';
import type { PayloadOf } from './payload.js';
import type { RingInflight } from './worker-protocol.js';

type InflightPayload = PayloadOf<'inflight'>;

/**
 * A buffer whose file could be truncated under the queue threads (no shrink seal, and none can be added: a plain
 * tmpfs or disk file): the SIGBUS of a touched page past its end would kill the whole back-end. The request is
 * refused and the rings go without tracking; the connection stays.
 */
export class InflightUnsealableError extends VhostUserError {}

function bad(msg: string, ctx: Record<string, unknown>): never {
  throw new VhostUserProtocolError(msg, ctx);
}

/** Bytes a back-end may keep in the buffer's device-state record (see InflightBuffer.saveState). */
export const DEVICE_STATE_MAX = 52;
/** The record: this magic, a u32 length, then the state; after the last queue's region. */
const STATE_MAGIC = Buffer.from('KUMO-DS1', 'ascii');
const STATE_RECORD = 64;

/**
 * The buffer of INFLIGHT_SHMFD (GET/SET_INFLIGHT_FD): made here for a front-end, which hands it back to the next
 * back-end after a restart. Queues' regions lie back to back from mmapOffset; see protocol/virtqueue/inflight.ts.
 */
export class InflightBuffer {
  private constructor(
    private readonly fd: number,
    readonly mmapSize: number,
    readonly mmapOffset: number,
    readonly numQueues: number,
    readonly queueSize: number,
  ) {}

  /** GET_INFLIGHT_FD: a zeroed buffer for numQueues rings of queueSize, sealed against resizing. */
  static create(p: InflightPayload, maxQueues: number, maxQueueSize: number): InflightBuffer {
    InflightBuffer.checkShape(p, maxQueues, maxQueueSize);
    // A device-state record after the queues' regions: the front-end keeps the buffer across a back-end restart, and
    // back-ends that do not know the record (libvhost-user) size each queue's region from the queue size alone.
    const size = p.numQueues * inflightRegionSize(p.queueSize) + STATE_RECORD;
    const fd = memfdCreate('vhost-user-inflight', MFD_CLOEXEC | MFD_ALLOW_SEALING);
    try {
      ftruncate(fd, size);
      sealAgainstShrink(fd, F_SEAL_GROW);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
    return new InflightBuffer(fd, size, 0, p.numQueues, p.queueSize);
  }

  /** SET_INFLIGHT_FD: a buffer a front-end kept (takes ownership of fd, closing it if refused). */
  static adopt(p: InflightPayload, fd: number, maxQueues: number, maxQueueSize: number): InflightBuffer {
    try {
      InflightBuffer.checkShape(p, maxQueues, maxQueueSize);
      const need = p.numQueues * inflightRegionSize(p.queueSize);
      if (p.mmapSize < need) bad('inflight buffer too small for its queues', { mmapSize: p.mmapSize, need });
      if (p.mmapOffset % 8 !== 0) bad('inflight buffer offset is misaligned', { mmapOffset: p.mmapOffset });
      // A page past the file's end would raise SIGBUS in the queue thread: the file must hold the whole buffer.
      const size = fstatSync(fd).size;
      if (p.mmapOffset + p.mmapSize > size) bad('inflight buffer is larger than its file', { mmapOffset: p.mmapOffset, mmapSize: p.mmapSize, fileSize: size });
      if (!sealAgainstShrink(fd)) {
        throw new InflightUnsealableError('inflight buffer file cannot be sealed against shrinking', { fileSize: size });
      }
      return new InflightBuffer(fd, p.mmapSize, p.mmapOffset, p.numQueues, p.queueSize);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
  }

  private static checkShape(p: InflightPayload, maxQueues: number, maxQueueSize: number): void {
    if (!Number.isInteger(p.numQueues) || p.numQueues < 1 || p.numQueues > maxQueues) {
      bad('inflight buffer for an impossible number of queues', { numQueues: p.numQueues, max: maxQueues });
    }
    if (!isQueueSize(p.queueSize, maxQueueSize)) bad('inflight buffer for an impossible queue size', { queueSize: p.queueSize, max: maxQueueSize });
  }

  /** The GET_INFLIGHT_FD reply (the fd goes with it: see replyFd). */
  payload(): InflightPayload {
    return { kind: 'inflight', mmapSize: this.mmapSize, mmapOffset: this.mmapOffset, numQueues: this.numQueues, queueSize: this.queueSize };
  }

  /** A duplicate of the buffer's fd, for the reply or a worker (the receiver closes it). */
  dupFd(): number {
    return dup(this.fd);
  }

  /** Ring `index` of `num` descriptors, if the buffer tracks it (another queue size would mean another layout). */
  ringRegion(index: number, num: number): RingInflight | null {
    if (index >= this.numQueues || num !== this.queueSize) return null;
    return { fd: dup(this.fd), offset: this.mmapOffset + index * inflightRegionSize(num) };
  }

  /** Where the device-state record lies in the file, if the buffer has room for one (a peer's buffer may not). */
  private stateAt(): number | null {
    const queues = this.numQueues * inflightRegionSize(this.queueSize);
    return this.mmapSize - queues >= STATE_RECORD ? this.mmapOffset + queues : null;
  }

  /**
   * Keeps driver-written device state (at most DEVICE_STATE_MAX bytes) where the next back-end finds it: QEMU reconnects
   * to a restarted back-end with the same buffer but never writes the device's config again. False if no room.
   */
  saveState(state: Uint8Array): boolean {
    const at = this.stateAt();
    if (at === null) return false;
    if (state.length > DEVICE_STATE_MAX) throw new VhostUserError('device state too large for the inflight buffer', { bytes: state.length, max: DEVICE_STATE_MAX });
    const rec = Buffer.alloc(STATE_RECORD);
    STATE_MAGIC.copy(rec, 0);
    rec.writeUInt32LE(state.length, 8);
    rec.set(state, 12);
    return writeSync(this.fd, rec, 0, STATE_RECORD, at) === STATE_RECORD;
  }

  /** The state an earlier back-end saved, or null (none, or no room). The front-end can write anything here. */
  savedState(): Uint8Array | null {
    const at = this.stateAt();
    if (at === null) return null;
    const rec = Buffer.alloc(STATE_RECORD);
    if (readSync(this.fd, rec, 0, STATE_RECORD, at) !== STATE_RECORD || !rec.subarray(0, 8).equals(STATE_MAGIC)) return null;
    const len = rec.readUInt32LE(8);
    return len <= DEVICE_STATE_MAX ? new Uint8Array(rec.subarray(12, 12 + len)) : null;
  }

  close(): void {
    closeQuiet(this.fd);
  }
}
