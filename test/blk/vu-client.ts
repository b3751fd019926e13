import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { GuestMemory } from '../../protocol/memory/index.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { DriverQueue, GuestAllocator, compactLayout, type QueueLayout, type Segment } from '../../protocol/virtqueue/index.js';
import type { PayloadOf } from '../../protocol/vhost-user/payload.js';
import { eventfd, eventfdRead, eventfdWrite, closeQuiet } from '../../protocol/sys/fd.js';
import { Epoll, EPOLLIN } from '../../protocol/sys/epoll.js';
import {
  encodeBlkHeader, encodeBlkDiscardSegment, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_RING_F_INDIRECT_DESC, bits, type BlkDiscardSegment,
} from '../../protocol/virtio/index.js';

const BIN = fileURLToPath(new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url));

/** Starts kumo-vhost-user-blk; resolves once its socket exists. */
export async function startBackend(args: string, env: Record<string, string> = {}): Promise<ChildProcess> {
  const socket = /socket=([^,]+)/.exec(args)?.[1] ?? '';
  const child = spawn(process.execPath, [BIN, '--block-backend', args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, KUMO_LOG: 'warn', ...env },
  });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`backend exited ${child.exitCode}: ${err}`);
    // the socket file appears at bind(); the daemon listens right after
    if (existsSync(socket) && i > 0) {
      await new Promise((r) => setTimeout(r, 50));
      return child;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`backend did not start: ${err}`);
}

export async function stopBackend(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const done = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  const code = await done;
  clearTimeout(t);
  return code;
}

export const BLK_FEATURES = bits(
  VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_TOPOLOGY, VIRTIO_RING_F_INDIRECT_DESC,
);

interface Q {
  driver: DriverQueue<number>;
  layout: QueueLayout;
  kick: number;
  call: number;
}

export interface BlkConnectOptions {
  numQueues?: number;
  queueSize?: number;
  memSize?: number;
  eventIdx?: boolean;
  indirect?: boolean;
  writethrough?: boolean;
  memory?: GuestMemory;
  /** Ask for an inflight-tracking buffer (GET_INFLIGHT_FD, then SET_INFLIGHT_FD, as QEMU does). */
  inflight?: boolean;
  /** Negotiate LOG_SHMFD, so that the test can migrate (SET_LOG_BASE, then LOG_ALL in SET_FEATURES, as QEMU does). */
  logShmfd?: boolean;
  /** Ask for REPLY_ACK on every request (as QEMU does for SET_FEATURES and SET_VRING_ADDR while it logs dirty pages). */
  ackEveryRequest?: boolean;
}

const PROTOCOL_WANTED = bits(0, 3, 9, 15);
const PROTOCOL_INFLIGHT = bits(12);
const PROTOCOL_LOG_SHMFD = bits(1);

/** A minimal vhost-user-blk front-end + driver for tests: raw chains in, used lengths out. */
export class BlkVuClient {
  readonly mem: GuestMemory;
  fe: VhostUserFrontend;
  readonly alloc: GuestAllocator;
  /** The inflight buffer the back-end handed out, kept across back-ends like QEMU keeps it. */
  inflight: { buffer: PayloadOf<'inflight'>; fd: number } | null = null;
  private wantFeatures = 0n;
  private wantProtocol = 0n;
  readonly queues: Q[] = [];
  readonly features: bigint;
  private readonly epoll = new Epoll(16);

  private constructor(fe: VhostUserFrontend, mem: GuestMemory, alloc: GuestAllocator, features: bigint) {
    this.fe = fe;
    this.mem = mem;
    this.alloc = alloc;
    this.features = features;
  }

  static async connect(socket: string, opts: BlkConnectOptions = {}): Promise<BlkVuClient> {
    const nq = opts.numQueues ?? 1;
    const qs = opts.queueSize ?? 128;
    const memSize = opts.memSize ?? 64 << 20;
    const fe = await VhostUserFrontend.connect(socket, { retryForMs: 5000, ackEveryRequest: opts.ackEveryRequest });
    let want = opts.eventIdx === false ? BLK_FEATURES & ~bits(VIRTIO_RING_F_EVENT_IDX) : BLK_FEATURES;
    // Without FLUSH (and CONFIG_WCE) the device must be writethrough.
    if (opts.writethrough) want &= ~bits(VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_CONFIG_WCE);
    const wantProtocol = PROTOCOL_WANTED | (opts.inflight ? PROTOCOL_INFLIGHT : 0n) | (opts.logShmfd ? PROTOCOL_LOG_SHMFD : 0n);
    const { features, protocolFeatures } = fe.negotiate(want, wantProtocol);
    let inflight = null;
    if (opts.inflight) {
      if ((protocolFeatures & PROTOCOL_INFLIGHT) === 0n) throw new Error('back-end does not offer INFLIGHT_SHMFD');
      inflight = fe.getInflightFd(nq, qs);
      fe.setInflightFd(inflight.buffer, inflight.fd);
    }
    // A caller's memory must start at guest address 0 and hold memSize bytes.
    const mem = opts.memory ?? GuestMemory.anonymous([{ guestAddr: 0, size: memSize }]);
    fe.setMemTable(mem);
    let base = 0x1000;
    const layouts = [];
    for (let i = 0; i < nq; i++) {
      const l = compactLayout(base, qs);
      layouts.push(l);
      base = Math.ceil(l.end / 4096) * 4096;
    }
    // 1 MiB per queue for indirect tables, the rest for buffers
    const indirectBase = base;
    base += nq << 20;
    const alloc = new GuestAllocator(base, memSize - base);
    const c = new BlkVuClient(fe, mem, alloc, features);
    c.inflight = inflight;
    c.wantFeatures = want;
    c.wantProtocol = wantProtocol;
    const eventIdx = (features & bits(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
    const useIndirect = (features & bits(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n && opts.indirect !== false;
    for (let i = 0; i < nq; i++) {
      const indirect = useIndirect ? new GuestAllocator(indirectBase + (i << 20), 1 << 20) : undefined;
      const driver = new DriverQueue<number>(mem, layouts[i], { eventIdx, indirect });
      const kick = eventfd();
      const call = eventfd();
      fe.setupVring(i, mem, layouts[i], kick, call);
      c.epoll.add(call, EPOLLIN, i);
      c.queues.push({ driver, layout: layouts[i], kick, call });
    }
    return c;
  }

  /**
   * Connects to a back-end started anew on `socket`, as QEMU does with chardev reconnect: same features, the kept
   * inflight buffer, the same memory and rings, each ring's base at its used index (what QEMU falls back to when the
   * old back-end could not answer GET_VRING_BASE).
   */
  async reconnect(socket: string): Promise<void> {
    this.fe.close();
    this.fe = await VhostUserFrontend.connect(socket, { retryForMs: 5000 });
    this.fe.negotiate(this.wantFeatures, this.wantProtocol);
    if (this.inflight !== null) this.fe.setInflightFd(this.inflight.buffer, this.inflight.fd);
    this.fe.setMemTable(this.mem);
    this.queues.forEach((q, i) => this.fe.setupVring(i, this.mem, q.layout, q.kick, q.call, this.mem.readU16(q.layout.usedAddr + 2)));
  }

  buf(len: number, align = 512): number {
    return this.alloc.allocOrThrow(len, align);
  }

  /** Adds a request chain; returns the status byte's address. */
  add(q: number, type: number, sector: number, readable: Segment[], writable: Segment[], token: number, statusLen = 1): number {
    const h = this.buf(VIRTIO_BLK_OUTHDR_SIZE, 16);
    this.mem.write(h, encodeBlkHeader({ type, ioprio: 0, sector }));
    const st = this.buf(Math.max(1, statusLen), 1);
    this.mem.writeU8(st + Math.max(1, statusLen) - 1, 0xff);
    const w = statusLen > 0 ? [...writable, { addr: st, len: statusLen }] : writable;
    this.addRaw(q, [{ addr: h, len: VIRTIO_BLK_OUTHDR_SIZE }, ...readable], w, token);
    return st + Math.max(1, statusLen) - 1;
  }

  /** Head of the chain add()/addRaw() made last. */
  lastHead = -1;

  addRaw(q: number, readable: Segment[], writable: Segment[], token: number): void {
    const head = this.queues[q].driver.add(readable, writable, token);
    if (head === null) throw new Error('queue full');
    this.lastHead = head;
  }

  ranges(segs: BlkDiscardSegment[]): Segment {
    const a = this.buf(segs.length * 16, 16);
    segs.forEach((s, i) => this.mem.write(a + i * 16, encodeBlkDiscardSegment(s)));
    return { addr: a, len: segs.length * 16 };
  }

  /** Publishes queue q, kicks, and waits until `count` requests came back; returns token → used length. */
  run(q: number, count: number, timeoutMs = 10_000): Map<number, number> {
    const { driver, kick, call } = this.queues[q];
    driver.publish();
    if (driver.kickNeeded()) eventfdWrite(kick);
    const out = new Map<number, number>();
    const until = Date.now() + timeoutMs;
    while (out.size < count) {
      for (const u of driver.takeUsed()) out.set(u.token, u.len);
      if (out.size >= count) break;
      if (Date.now() > until) throw new Error(`timeout: ${out.size}/${count} requests completed`);
      this.epoll.wait(20);
      eventfdRead(call);
    }
    return out;
  }

  close(): void {
    this.fe.close();
    if (this.inflight !== null) closeQuiet(this.inflight.fd);
    for (const q of this.queues) {
      closeQuiet(q.kick);
      closeQuiet(q.call);
    }
    this.epoll.close();
    this.mem.close();
  }
}

/** qemu-storage-daemon exporting img (a file, or with blockDevice a block device) as vhost-user-blk on sock (the reference back-end). */
export async function startQsd(img: string, sock: string, numQueues = 1, opts: { direct?: boolean; blockDevice?: boolean } = {}): Promise<ChildProcess> {
  const driver = opts.blockDevice ? 'host_device' : 'file';
  const child = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=${driver},node-name=f,filename=${img},aio=io_uring,cache.direct=${opts.direct ? 'on' : 'off'},discard=unmap`,
    '--export', `type=vhost-user-blk,id=e0,node-name=f,addr.type=unix,addr.path=${sock},writable=on,num-queues=${numQueues}`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited ${child.exitCode}: ${err}`);
    if (existsSync(sock)) return child;
    await new Promise((r) => setTimeout(r, 25));
  }
  child.kill('SIGKILL');
  throw new Error(`qemu-storage-daemon did not start: ${err}`);
}

export function haveQsd(): boolean {
  try {
    return existsSync('/usr/bin/qemu-storage-daemon') || existsSync('/usr/local/bin/qemu-storage-daemon');
  } catch {
    return false;
  }
}
