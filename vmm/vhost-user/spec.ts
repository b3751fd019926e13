// What every thread's device model needs to answer feature and config reads of a vhost-user device
// without asking the backend: built once on the main thread, structured-clone safe.

export type VhostUserKind = 'blk' | 'net' | 'fs';

export interface VhostUserDeviceSpec {
  id: string;
  kind: VhostUserKind;
  deviceType: number;
  queueSizes: number[];
  /** Features offered to the guest (the backend's, masked to what kumo supports; bit 30 removed). */
  features: bigint;
  /** Device config space bytes, shared by every thread (guest config writes land here). */
  config: SharedArrayBuffer;
  /** [offset, length] ranges of config space the guest may write; forwarded with SET_CONFIG. */
  writable: [number, number][];
  /** Int32 [dirtyLo, dirtyHi): config bytes written by the guest and not yet sent to the backend. */
  dirty: SharedArrayBuffer;
  /** eventfd a vCPU worker signals after a config write; the main thread then sends SET_CONFIG. */
  configEventFd: number;
  /** The PCI slot asked for (pci_device_id), or null: the next free one. */
  pciSlot: number | null;
}

export const DIRTY_NONE_LO = 0x7fffffff;
/** Indices in the dirty range's Int32Array: config writes a vCPU asked to be sent, and those the main thread has sent. */
export const DIRTY_ASKED = 2;
export const DIRTY_DONE = 3;

/** Int32 [dirtyLo, dirtyHi, flushes asked (a vCPU's config write), flushes done (the main thread's SET_CONFIG acked)]. */
export function newDirtyRange(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(16);
  const w = new Int32Array(sab);
  w[0] = DIRTY_NONE_LO;
  w[1] = 0;
  return sab;
}
