import { VirtqueueError } from './errors.js';

/** Guest addresses of a split virtqueue's three parts. */
export interface QueueLayout {
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
}

/** A guest address range. */
export interface Segment {
  addr: number;
  len: number;
}

export const MAX_QUEUE_SIZE = 32768;

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

export const DESC_SIZE = 16;
export const USED_ELEM_SIZE = 8;

/** Byte sizes of the three rings for a queue of `size` entries (EVENT_IDX fields included). */
export function ringSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + USED_ELEM_SIZE * size };
}

/** A split ring size: a power of two from 1 to `max` (at most 32768). */
export function isQueueSize(size: number, max = MAX_QUEUE_SIZE): boolean {
  return Number.isInteger(size) && size >= 1 && size <= Math.min(max, MAX_QUEUE_SIZE) && (size & (size - 1)) === 0;
}

/** Throws VirtqueueError unless size is a power of two in [1, 32768] and the rings are aligned (virtio 1.x). */
export function validateLayout(l: QueueLayout): void {
  const { size } = l;
  if (!isQueueSize(size)) {
    throw new VirtqueueError('queue size must be a power of two between 1 and 32768', { size });
  }
  for (const [name, addr, align] of [
    ['descAddr', l.descAddr, 16],
    ['availAddr', l.availAddr, 2],
    ['usedAddr', l.usedAddr, 4],
  ] as const) {
    if (!Number.isSafeInteger(addr) || addr < 0 || addr % align !== 0) {
      throw new VirtqueueError(`${name} must be a ${align}-byte aligned guest address`, { [name]: addr, align });
    }
  }
}

/** A compact virtio 1.x layout starting at `base` (16-byte aligned): desc, then avail, then used (4-aligned). */
export function compactLayout(base: number, size: number): QueueLayout & { end: number } {
  const s = ringSizes(size);
  const descAddr = base;
  const availAddr = descAddr + s.desc;
  const usedAddr = alignUp(availAddr + s.avail, 4);
  const layout = { size, descAddr, availAddr, usedAddr, end: usedAddr + s.used };
  validateLayout(layout);
  return layout;
}

export function alignUp(v: number, align: number): number {
  return Math.ceil(v / align) * align;
}

/**
 * virtio's vring_need_event: true if `eventIdx` lies in [old, new) modulo 2^16, i.e. the other side
 * asked to be told once the entry at eventIdx is published and this batch moved the index from old to new.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
