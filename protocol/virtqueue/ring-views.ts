import { GuestMemoryError, type GuestMemory } from '../memory/index.js';
import { addressOf } from '../sys/libc.js';
import { RingMemoryError, VirtqueueError } from './errors.js';
import { ringSizes, validateLayout, type QueueLayout } from './layout.js';

// Ring fields are read through host-endian typed arrays (Atomics need them); virtio 1.x rings are little endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error('virtqueue: big-endian hosts are not supported');

/**
 * Cached typed views of a split queue's rings. Indices (in elements):
 *  avail16: [0] flags, [1] idx, [2+i] ring[i], [2+size] used_event
 *  used16:  [0] flags, [1] idx, [2+4*size] avail_event;  used32: [1+2i] ring[i].id, [2+2i] ring[i].len
 */
export class RingViews {
  readonly desc: DataView;
  readonly avail16: Uint16Array;
  readonly used16: Uint16Array;
  readonly used32: Uint32Array;
  readonly usedEventIdx: number;
  readonly availEventIdx: number;

  constructor(mem: GuestMemory, layout: QueueLayout) {
    validateLayout(layout);
    const s = ringSizes(layout.size);
    const desc = sliceRing(mem, 'descriptor table', layout.descAddr, s.desc);
    const avail = sliceRing(mem, 'avail ring', layout.availAddr, s.avail);
    const used = sliceRing(mem, 'used ring', layout.usedAddr, s.used);
    // The host addresses themselves: a region whose mmap_offset is not a multiple of 4 shifts every guest address
    // against the mapping, and an atomic access across two cache lines is a split lock (SIGBUS where it is fatal).
    if (addressOf(avail) % 2n !== 0n || addressOf(used) % 4n !== 0n || addressOf(desc) % 8n !== 0n) {
      throw new VirtqueueError('ring host view is misaligned', { availAddr: layout.availAddr, usedAddr: layout.usedAddr });
    }
    this.desc = new DataView(desc.buffer, desc.byteOffset, desc.byteLength);
    this.avail16 = new Uint16Array(avail.buffer, avail.byteOffset, s.avail / 2);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, s.used / 2);
    // The used ring is 6 + 8*size bytes: its u32 view stops before the trailing u16 avail_event.
    this.used32 = new Uint32Array(used.buffer, used.byteOffset, 1 + 2 * layout.size);
    this.usedEventIdx = 2 + layout.size;
    this.availEventIdx = 2 + 4 * layout.size;
  }
}

function sliceRing(mem: GuestMemory, what: string, addr: number, len: number): Uint8Array {
  try {
    return mem.slice(addr, len);
  } catch (e) {
    if (e instanceof GuestMemoryError) throw new RingMemoryError(`${what} is not inside guest memory`, { addr, len });
    throw e;
  }
}
