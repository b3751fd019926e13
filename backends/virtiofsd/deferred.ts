import type { GuestMemory } from '../../protocol/memory/index.js';
import type { VringHandle } from '../../protocol/vhost-user/backend-types.js';
import { OUT_HEADER_SIZE } from '../../protocol/fuse/index.js';

/** FuseServer.handle()'s answer for a request it will answer later: no reply yet, the chain stays out. */
export const DEFERRED = -2;

/** Takes the chains of the requests it deferred: after a DEFERRED answer the queue loop hands it (ring, head). */
export interface Deferrer {
  bind(owner: VringHandle, head: number): void;
}

/**
 * Finishes deferred requests: writes the reply header at the guest address recorded when the request was
 * deferred (the chain itself is not kept, so guest memory may be remapped meanwhile), returns the chain, and
 * publishes and signals each ring it touched once per round.
 */
export class DeferredReplies {
  private readonly hdr = new Uint8Array(OUT_HEADER_SIZE);
  private readonly view = new DataView(this.hdr.buffer);
  private readonly touched = new Set<VringHandle>();

  /** `result`: bytes of data already in the chain after the header, or -errno. */
  complete(mem: GuestMemory, owner: VringHandle, head: number, hdrGpa: number, uniqueLo: number, uniqueHi: number, result: number): void {
    const n = result > 0 ? result : 0;
    const d = this.view;
    d.setUint32(0, OUT_HEADER_SIZE + n, true);
    d.setInt32(4, result < 0 ? result : 0, true);
    d.setUint32(8, uniqueLo, true);
    d.setUint32(12, uniqueHi, true);
    let len = OUT_HEADER_SIZE + n;
    try {
      mem.write(hdrGpa, this.hdr);
    } catch {
      len = 0; // the header address stopped being guest memory: the chain goes back empty
    }
    owner.queue.pushUsed(head, len);
    this.touched.add(owner);
  }

  /** Publishes the used entries of this round and signals their rings. */
  publish(): void {
    for (const r of this.touched) {
      r.queue.publishUsed();
      r.notify();
    }
    this.touched.clear();
  }
}
