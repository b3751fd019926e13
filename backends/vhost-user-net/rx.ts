// TAP → guest. Each frame is read with one readv straight into the guest's posted buffers (iovecs
// point into the shared guest mapping), so the payload is never copied by us. With MRG_RXBUF a frame
// may span several chains; num_buffers in its header says how many.
import type { GuestMemory } from '../../protocol/memory/index.js';
import type { DescriptorChain } from '../../protocol/virtqueue/chain.js';
import { ChainError } from '../../protocol/virtqueue/errors.js';
import { writeToChain } from '../../protocol/virtqueue/chain.js';
import { IoVecList, readv } from '../../protocol/sys/fd.js';
import { addressOf, SysError } from '../../protocol/sys/libc.js';
import { COUNTER } from './counters.js';
import { HostAddrs } from './host-addr.js';
import { PassResult, type NetQueue } from './net-queue.js';
import { NET_HDR_LEN, NET_HDR_NUM_BUFFERS } from './virtio-net.js';

const IOV_MAX = 1024;
/** Bytes one TAP read can return: a 64 KiB GSO frame and its virtio-net header. */
const MAX_TAP_READ = 65536 + NET_HDR_LEN;
/** Guest iovecs one frame may span: the last iovec of a read is a host byte that catches a frame too big for them. */
const GUEST_IOV_MAX = IOV_MAX - 1;

export interface RxOptions {
  /** MRG_RXBUF acked: a frame may use several chains. */
  mergeable: boolean;
  /** virtio-net header length (12 with VERSION_1 or MRG_RXBUF, else 10). */
  hdrLen: number;
  /** Largest frame (header included) the TAP can hand us: buffers are gathered to cover it. */
  maxFrame: number;
  /** Ring size: holding this many chains means no more can come, so a gather stops there. */
  queueSize: number;
}

/** A popped chain whose writable segments were resolved to host addresses. */
interface HeldChain {
  chain: DescriptorChain;
  addrs: number[];
}

export class RxPath {
  private held: HeldChain[] = [];
  private first = 0;
  private heldBytes = 0;
  private readonly iov = new IoVecList(IOV_MAX);
  private readonly hosts = new HostAddrs();
  private readonly nb = new Uint8Array(2);
  private readonly overflow = new Uint8Array(1);
  private readonly overflowAddr = addressOf(this.overflow);
  /**
   * A frame read aside (mergeable only) while the guest had fewer bytes posted than the largest frame: it goes to the
   * guest as soon as its buffers hold it. `aside` bytes of `bounce` (0: none).
   */
  private bounce = new Uint8Array(0);
  private bounceAddr = 0n;
  private aside = 0;
  private opts: RxOptions = { mergeable: false, hdrLen: NET_HDR_LEN, maxFrame: 1526, queueSize: 256 };
  /** Used elements pushed but not yet published. */
  private pending = 0;
  /** Memory the held chains' host addresses were resolved in, and its generation then (see GuestMemory.generation). */
  private mem: GuestMemory | null = null;
  private memGen = -1;

  constructor(private readonly tapFd: number, private readonly c: Float64Array) {}

  configure(opts: RxOptions): void {
    this.opts = opts;
  }

  get heldChains(): number {
    return this.held.length - this.first;
  }

  /**
   * Moves up to `budget` frames from the TAP into guest buffers and publishes them.
   * Returns how the pass ended; `published` tells the caller whether to notify.
   */
  run(q: NetQueue, mem: GuestMemory, budget: number): { result: PassResult; published: number } {
    const { mergeable, hdrLen, maxFrame } = this.opts;
    const c = this.c;
    let frames = 0;
    let result: PassResult = PassResult.Budget;
    // ADD_MEM_REG / REM_MEM_REG change the same GuestMemory in place: a held chain's host addresses may point at an
    // unmapped region, or at whatever was mapped there since (another region), so they are resolved again.
    if (mem !== this.mem || mem.generation !== this.memGen) this.remap(q, mem);
    q.disableNotifications();
    while (frames < budget) {
      if (this.aside > 0) {
        if (!this.fill(q, mem, this.aside, true)) {
          result = PassResult.NoBuffers;
          break;
        }
        this.deliverAside(q, mem, hdrLen);
        frames++;
        continue;
      }
      const need = mergeable ? maxFrame : 1;
      if (!this.fill(q, mem, need, mergeable)) {
        // Linux refills a ring only once half of it is free: waiting for buffers that cover the largest frame (64 KiB
        // with GSO) would wait for good. The next frame is read aside and most likely fits what is held.
        if (!mergeable || this.heldChains === 0) {
          result = PassResult.NoBuffers;
          break;
        }
        const got = this.readAside(maxFrame);
        if (got === 0) {
          result = PassResult.Drained;
          break;
        }
        if (got < 0) frames++;
        continue;
      }
      const iov = this.iov;
      iov.clear();
      let k = this.first;
      let covered = 0;
      if (mergeable) {
        while (k < this.held.length && covered < maxFrame && iov.count < GUEST_IOV_MAX) {
          covered += this.pushChain(this.held[k], maxFrame - covered);
          k++;
        }
      } else {
        covered = this.pushChain(this.held[k], Infinity);
      }
      // A TAP read copies what fits and drops the rest of the frame: a frame that reaches this byte was cut short.
      iov.push(this.overflowAddr, 1);
      const n = this.readFrame(iov);
      if (n < 0) {
        frames++;
        continue;
      }
      if (n === 0) {
        result = PassResult.Drained;
        break;
      }
      if (n > covered) {
        // Bigger than the buffers gathered (the TAP's MTU raised since, or a ring too small for a GSO frame): the
        // guest must not take a truncated frame for a whole one. Its buffers stay held for the next frame.
        c[COUNTER.rxOversized]++;
        c[COUNTER.rxDropped]++;
        frames++;
        continue;
      }
      this.complete(q, mem, n, hdrLen);
      frames++;
      c[COUNTER.rxFrames]++;
      c[COUNTER.rxBytes] += n - hdrLen;
    }
    const published = this.pending;
    if (published > 0) {
      q.publishUsed();
      this.pending = 0;
    }
    if (result === PassResult.NoBuffers) c[COUNTER.rxNoBuffers]++;
    return { result, published };
  }

  /** One frame from the TAP into `iov`: its length, 0 when the TAP is empty, -1 when the kernel refused it (counted). */
  private readFrame(iov: IoVecList): number {
    try {
      return Math.max(0, readv(this.tapFd, iov));
    } catch (e) {
      // The kernel refused to copy this frame into the buffers (EFAULT/EINVAL/EMSGSIZE) and dropped it.
      if (e instanceof SysError && (e.code === 'EFAULT' || e.code === 'EINVAL' || e.code === 'EMSGSIZE')) {
        this.c[COUNTER.rxDropped]++;
        return -1;
      }
      throw e;
    }
  }

  /**
   * Reads the next frame into the bounce buffer (this.aside: its length). Returns that length, 0 when the TAP is
   * empty, or -1 for a frame dropped (counted): too big even for the bounce buffer.
   */
  private readAside(maxFrame: number): number {
    const iov = this.bounceIov(maxFrame);
    iov.push(this.overflowAddr, 1);
    const n = this.readFrame(iov);
    if (n <= 0) return n;
    if (n > maxFrame) {
      this.c[COUNTER.rxOversized]++;
      this.c[COUNTER.rxDropped]++;
      return -1;
    }
    this.aside = n;
    return n;
  }

  /** Copies the frame read aside into the held chains (they hold enough bytes, or all the ring has) and hands them over. */
  private deliverAside(q: NetQueue, mem: GuestMemory, hdrLen: number): void {
    const n = this.aside;
    this.aside = 0;
    if (this.heldBytes < n) {
      // The whole ring cannot hold it.
      this.c[COUNTER.rxOversized]++;
      this.c[COUNTER.rxDropped]++;
      return;
    }
    let off = 0;
    for (let k = this.first; off < n; k++) {
      const chain = this.held[k].chain;
      const len = Math.min(n - off, chain.writableLength);
      writeToChain(mem, chain.writable, 0, this.bounce.subarray(off, off + len));
      off += len;
    }
    this.complete(q, mem, n, hdrLen);
    this.c[COUNTER.rxFrames]++;
    this.c[COUNTER.rxBytes] += n - hdrLen;
  }

  /** The iovec list set to the first `len` bytes of the bounce buffer (grown, and its address taken, when too small). */
  private bounceIov(len: number): IoVecList {
    if (this.bounce.length < len) {
      this.bounce = new Uint8Array(len);
      this.bounceAddr = addressOf(this.bounce);
    }
    this.iov.clear();
    this.iov.push(this.bounceAddr, len);
    return this.iov;
  }

  /**
   * Drops what the TAP queued before this ring started: those frames were built under the offloads of an earlier
   * front-end (or driver instance), and their headers may carry checksum or GSO state this one never negotiated.
   */
  discardQueued(): void {
    const iov = this.bounceIov(MAX_TAP_READ);
    try {
      for (let k = 0; k < 1_000_000 && readv(this.tapFd, iov) > 0; k++) this.c[COUNTER.rxDropped]++;
    } catch {
      // the TAP is failing: the queue pair reports it once traffic flows
    }
  }

  /** Gives back every held (popped, unused) chain by rewinding the avail index: the ring is stopping. */
  release(q: NetQueue): void {
    if (this.aside > 0) this.c[COUNTER.rxDropped]++;
    this.aside = 0;
    const n = this.held.length - this.first;
    if (n > 0) q.nextAvailIdx = (q.nextAvailIdx - n) & 0xffff;
    this.held = [];
    this.first = 0;
    this.heldBytes = 0;
    this.pending = 0;
    this.mem = null;
    this.memGen = -1;
  }

  /** The memory table changed: held chains keep their guest addresses but need new host ones. */
  private remap(q: NetQueue, mem: GuestMemory): void {
    const kept: HeldChain[] = [];
    this.heldBytes = 0;
    for (let i = this.first; i < this.held.length; i++) {
      const h = this.held[i];
      const addrs = this.resolve(mem, h.chain);
      if (addrs === null) {
        this.c[COUNTER.rxBadChain]++;
        q.pushUsed(h.chain.head, 0);
        this.pending++;
        continue;
      }
      kept.push({ chain: h.chain, addrs });
      this.heldBytes += h.chain.writableLength;
    }
    this.held = kept;
    this.first = 0;
    // Last: a remap that failed (the rings' own region unmapped, RingMemoryError) is done again on the next run.
    this.mem = mem;
    this.memGen = mem.generation;
  }

  private pushChain(h: HeldChain, limit: number): number {
    const segs = h.chain.writable;
    let covered = 0;
    for (let i = 0; i < segs.length && covered < limit && this.iov.count < GUEST_IOV_MAX; i++) {
      this.iov.push(h.addrs[i], segs[i].len);
      covered += segs[i].len;
    }
    return covered;
  }

  /** Hands the chains that now hold an n-byte frame back to the guest and fills in num_buffers. */
  private complete(q: NetQueue, mem: GuestMemory, n: number, hdrLen: number): void {
    let used = 0;
    for (let remaining = n; remaining > 0; used++) {
      remaining -= this.held[this.first + used].chain.writableLength;
      if (!this.opts.mergeable) {
        used++;
        break;
      }
    }
    // num_buffers before any chain is used: a front-end logging dirty pages (migration) has each chain's pages
    // marked as it is used, so nothing may be written to them after.
    if (hdrLen === NET_HDR_LEN) this.writeNumBuffers(mem, this.held[this.first].chain, used);
    let remaining = n;
    for (let i = 0; i < used; i++) {
      const h = this.held[this.first + i];
      const len = Math.min(remaining, h.chain.writableLength);
      q.pushUsed(h.chain.head, len);
      remaining -= len;
      this.heldBytes -= h.chain.writableLength;
    }
    this.first += used;
    this.pending += used;
    if (this.first === this.held.length) {
      this.held.length = 0;
      this.first = 0;
    } else if (this.first >= 256) {
      this.held = this.held.slice(this.first);
      this.first = 0;
    }
  }

  private writeNumBuffers(mem: GuestMemory, chain: DescriptorChain, count: number): void {
    const s0 = chain.writable[0];
    if (s0.len >= NET_HDR_LEN) {
      mem.writeU16(s0.addr + NET_HDR_NUM_BUFFERS, count);
      return;
    }
    // Header split over tiny descriptors: walk the segments.
    this.nb[0] = count & 0xff;
    this.nb[1] = count >> 8;
    let skip = NET_HDR_NUM_BUFFERS;
    let done = 0;
    for (const s of chain.writable) {
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      const m = Math.min(s.len - skip, 2 - done);
      mem.write(s.addr + skip, this.nb.subarray(done, done + m));
      done += m;
      skip = 0;
      if (done === 2) break;
    }
  }

  /** Pops chains until `need` bytes (mergeable) or one chain is held; false when the ring ran dry. */
  private fill(q: NetQueue, mem: GuestMemory, need: number, mergeable: boolean): boolean {
    const c = this.c;
    const { hdrLen } = this.opts;
    for (;;) {
      const count = this.held.length - this.first;
      const have = mergeable ? this.heldBytes >= need || count >= this.opts.queueSize : count > 0;
      if (have) return true;
      let chain: DescriptorChain | null;
      try {
        chain = q.pop();
      } catch (e) {
        if (!(e instanceof ChainError)) throw e;
        c[COUNTER.rxBadChain]++;
        if (q.returnMalformed(e)) this.pending++;
        continue;
      }
      if (chain === null) {
        if (q.enableNotifications()) {
          q.disableNotifications();
          continue;
        }
        // Partial gathers stay held: the next kick adds to them.
        return false;
      }
      const addrs = this.resolve(mem, chain);
      if (addrs === null || chain.writableLength < hdrLen || chain.writable.length > GUEST_IOV_MAX) {
        c[COUNTER.rxBadChain]++;
        q.pushUsed(chain.head, 0);
        this.pending++;
        continue;
      }
      this.held.push({ chain, addrs });
      this.heldBytes += chain.writableLength;
    }
  }

  private resolve(mem: GuestMemory, chain: DescriptorChain): number[] | null {
    const segs = chain.writable;
    const addrs = new Array<number>(segs.length);
    for (let i = 0; i < segs.length; i++) {
      const a = this.hosts.resolve(mem, segs[i].addr, segs[i].len);
      if (a < 0) return null;
      addrs[i] = a;
    }
    return addrs;
  }
}
