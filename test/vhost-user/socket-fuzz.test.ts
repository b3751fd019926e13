import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import { ftruncate, mapFd, memfdCreate } from '../../protocol/sys/mem.js';
import { sendMsg, unixConnect } from '../../protocol/sys/socket.js';
import { Request } from '../../protocol/vhost-user/index.js';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../protocol/virtio/index.js';
import { BlkVuClient, startBackend, stopBackend } from '../blk/vu-client.js';
import { fuzzSeed, putU64, Rng } from '../fuzz-rng.js';

/**
 * Seeded random vhost-user traffic against a real back-end process (kumo-vhost-user-blk; the daemon loop
 * and message handling are shared by all three back-ends): well-formed messages with random fields,
 * wrong sizes, unknown requests, stray or missing fds, memory tables that do not fit their files, rings
 * placed on random bytes and kicked. The process must survive every connection and then serve a normal
 * front-end.
 */

const CONNECTIONS = Number(process.env.FUZZ_CONNECTIONS ?? 40);
const MESSAGES = 60;
const MEM = 1 << 20;
const USER_BASE = 0x7f00_0000_0000;

/** One connection's worth of traffic: "guest memory" is a memfd filled with random bytes. */
class Fuzzer {
  private readonly memfd: number;
  private readonly fds: number[] = [];
  private readonly kicks: number[] = [];
  private readonly guest;

  constructor(
    private readonly rng: Rng,
    private readonly sock: number,
    /** What the preamble asks for: only protocol features the back-end offers, or it hangs up at once. */
    private readonly protocolFeatures = 0x8209,
  ) {
    this.memfd = memfdCreate('fuzz-guest');
    ftruncate(this.memfd, MEM);
    this.guest = mapFd(this.memfd, MEM);
    const m = this.guest.bytes;
    for (let i = 0; i < MEM; i += 4) m[i] = rng.u32() & 0xff;
    // Some sane-looking ring fields too: small avail/used indices.
    for (let i = 0; i < 64; i++) m[rng.below(MEM)] = rng.below(4);
  }

  private raw(r: number, payload: Buffer, fds: number[] = []): boolean {
    const header = Buffer.alloc(12);
    header.writeUInt32LE(r, 0);
    header.writeUInt32LE(0x1, 4);
    header.writeUInt32LE(payload.length, 8);
    try {
      sendMsg(this.sock, Buffer.concat([header, payload]), fds);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * A valid set-up of one or two rings over the random memory, so that the rest of the traffic (and the
   * scribbles) reaches running queue workers instead of ending at the first refused message.
   */
  preamble(): void {
    const rng = this.rng;
    const two = (lo: number, hi: number): Buffer => {
      const b = Buffer.alloc(8);
      b.writeUInt32LE(lo >>> 0, 0);
      b.writeUInt32LE(hi >>> 0, 4);
      return b;
    };
    // VERSION_1, PROTOCOL_FEATURES, EVENT_IDX or not, INDIRECT_DESC; then e.g. MQ | REPLY_ACK | CONFIG | CONFIGURE_MEM_SLOTS.
    this.raw(Request.SET_FEATURES, two(0x5000_0000 | (rng.chance(0.5) ? 0x2000_0000 : 0), 1));
    this.raw(Request.SET_PROTOCOL_FEATURES, two(this.protocolFeatures, 0));
    const table = Buffer.alloc(40);
    table.writeUInt32LE(1, 0);
    putU64(table, 16, MEM);
    putU64(table, 24, USER_BASE);
    this.raw(Request.SET_MEM_TABLE, table, [this.memfd]);
    for (let q = 0; q < 1 + rng.below(2); q++) {
      const size = rng.pick([16, 128, 256]);
      this.raw(Request.SET_VRING_NUM, two(q, size));
      const addr = Buffer.alloc(40);
      addr.writeUInt32LE(q, 0);
      const at = (align: number): number => USER_BASE + (rng.below(MEM - 16 * 256 - 8) & ~(align - 1));
      const [desc, used, avail] = [at(16), at(4), at(2)];
      putU64(addr, 8, desc);
      putU64(addr, 16, used);
      putU64(addr, 24, avail);
      this.raw(Request.SET_VRING_ADDR, addr);
      this.plausibleRing(desc - USER_BASE, avail - USER_BASE, used - USER_BASE, size);
      this.raw(Request.SET_VRING_BASE, two(q, rng.chance(0.8) ? 0 : rng.below(size)));
      this.raw(Request.SET_VRING_CALL, two(q, 0), [this.eventfd()]);
      const kick = this.eventfd();
      this.kicks.push(kick);
      this.raw(Request.SET_VRING_KICK, two(q, 0), [kick]);
      this.raw(Request.SET_VRING_ENABLE, two(q, 1));
      eventfdWrite(kick);
    }
  }

  /** Descriptors that point into memory with small lengths and mostly sane flags, and a few chains made available. */
  private plausibleRing(desc: number, avail: number, used: number, size: number): void {
    const rng = this.rng;
    const m = Buffer.from(this.guest.bytes.buffer, this.guest.bytes.byteOffset, MEM);
    for (let d = 0; d < size; d++) {
      putU64(m, desc + 16 * d, rng.below(MEM - 8192) & ~511);
      m.writeUInt32LE(rng.pick([1, 16, 512, 4096, rng.below(8192), rng.u32()]), desc + 16 * d + 8);
      // NEXT 1, WRITE 2, INDIRECT 4
      m.writeUInt16LE(rng.pick([0, 1, 2, 3, 1, 3, 4, rng.below(8)]), desc + 16 * d + 12);
      m.writeUInt16LE(rng.below(size + 2), desc + 16 * d + 14);
    }
    const n = rng.below(size + 1);
    m.writeUInt16LE(0, avail);
    m.writeUInt16LE(n, avail + 2);
    for (let k = 0; k < size; k++) m.writeUInt16LE(rng.chance(0.95) ? rng.below(size) : rng.below(0x10000), avail + 4 + 2 * k);
    m.writeUInt16LE(0, used + 2);
  }

  /** The "guest" rewrites some bytes (descriptors, ring indices) and kicks. */
  scribble(): void {
    const rng = this.rng;
    const at = rng.below(MEM - 64);
    for (let i = 0; i < 1 + rng.below(64); i++) this.guest.bytes[at + i] = rng.chance(0.5) ? rng.below(4) : rng.u32() & 0xff;
    if (this.kicks.length > 0) eventfdWrite(rng.pick(this.kicks));
  }

  private addr(): number {
    return this.rng.chance(0.9) ? this.rng.below(MEM) & ~15 : this.rng.pick([MEM - 2, MEM, 2 ** 40, 2 ** 53 - 1]);
  }

  private index(): number {
    return this.rng.chance(0.85) ? this.rng.below(2) : this.rng.pick([2, 255, 256, 0xffff, 0xffffffff]);
  }

  private eventfd(): number {
    const fd = eventfd();
    this.fds.push(fd);
    return fd;
  }

  private region(): Buffer {
    const r = Buffer.alloc(32);
    const size = this.rng.chance(0.7) ? MEM : this.rng.pick([0, 4096, MEM + 4096, 2 * MEM, 2 ** 40]);
    putU64(r, 0, this.rng.chance(0.8) ? 0 : this.addr());
    putU64(r, 8, size);
    putU64(r, 16, USER_BASE);
    putU64(r, 24, this.rng.chance(0.8) ? 0 : this.rng.pick([1, 4096, MEM - 4096, MEM]));
    return r;
  }

  /** Payload and fds of one message for request r, mostly well-formed. */
  private body(r: number): { payload: Buffer; fds: number[] } {
    const rng = this.rng;
    const b = (n: number): Buffer => Buffer.alloc(n);
    switch (r) {
      case Request.SET_FEATURES:
      case Request.SET_PROTOCOL_FEATURES: {
        const p = b(8);
        p.writeUInt32LE(rng.chance(0.5) ? (0x4000_0000 | rng.below(4)) >>> 0 : rng.u32(), 4);
        p.writeUInt32LE(rng.u32(), 0);
        return { payload: p, fds: [] };
      }
      case Request.SET_MEM_TABLE: {
        const n = rng.chance(0.8) ? 1 : rng.below(10);
        const p = b(8 + 32 * n);
        p.writeUInt32LE(n, 0);
        for (let k = 0; k < n; k++) this.region().copy(p, 8 + 32 * k);
        const fds = Array.from({ length: rng.chance(0.9) ? n : rng.below(4) }, () => this.memfd);
        return { payload: p, fds };
      }
      case Request.ADD_MEM_REG:
      case Request.REM_MEM_REG: {
        const p = b(40);
        this.region().copy(p, 8);
        return { payload: p, fds: r === Request.ADD_MEM_REG && rng.chance(0.9) ? [this.memfd] : [] };
      }
      case Request.SET_VRING_NUM:
      case Request.SET_VRING_BASE:
      case Request.GET_VRING_BASE:
      case Request.SET_VRING_ENABLE: {
        const p = b(8);
        p.writeUInt32LE(this.index(), 0);
        p.writeUInt32LE(rng.pick([0, 1, 2, 128, 256, 1000, 1024, 32768, 65535, rng.u32()]), 4);
        return { payload: p, fds: [] };
      }
      case Request.SET_VRING_ADDR: {
        const p = b(40);
        p.writeUInt32LE(this.index(), 0);
        p.writeUInt32LE(rng.below(2), 4);
        for (const at of [8, 16, 24, 32]) putU64(p, at, USER_BASE + this.addr());
        return { payload: p, fds: [] };
      }
      case Request.SET_VRING_KICK:
      case Request.SET_VRING_CALL:
      case Request.SET_VRING_ERR: {
        const p = b(8);
        const nofd = rng.chance(0.15);
        p.writeUInt32LE((this.index() | (nofd ? 0x100 : 0)) >>> 0, 0);
        return { payload: p, fds: nofd && rng.chance(0.7) ? [] : [this.eventfd()] };
      }
      case Request.GET_CONFIG:
      case Request.SET_CONFIG: {
        const size = rng.pick([0, 8, 60, 256, 4096, rng.u32()]);
        const p = b(12 + (size <= 256 ? size : rng.below(64)));
        p.writeUInt32LE(rng.pick([0, 4, 20, 60, 256, rng.u32()]), 0);
        p.writeUInt32LE(size, 4);
        p.writeUInt32LE(rng.below(3), 8);
        return { payload: p, fds: [] };
      }
      case Request.GET_INFLIGHT_FD:
      case Request.SET_INFLIGHT_FD: {
        // {u64 mmap_size; u64 mmap_offset; u16 num_queues; u16 queue_size}: mostly plausible, on the random guest memfd.
        const p = b(rng.chance(0.9) ? 24 : rng.pick([0, 8, 20, 32]));
        if (p.length >= 20) {
          putU64(p, 0, rng.pick([MEM / 2, MEM / 2, 4096, 16448, MEM, MEM * 2, 0, rng.u32()]));
          putU64(p, 8, rng.pick([0, 0, 0, 8, 4096, MEM - 64, rng.u32()]));
          p.writeUInt16LE(rng.pick([1, 1, 2, 2, 8, 0, rng.below(65536)]), 16);
          p.writeUInt16LE(rng.pick([128, 256, 256, 1024, 3, 0, rng.below(65536)]), 18);
        }
        const fds = r === Request.GET_INFLIGHT_FD ? (rng.chance(0.1) ? [this.eventfd()] : []) : rng.chance(0.9) ? [this.memfd] : [];
        return { payload: p, fds };
      }
      case Request.SET_LOG_BASE:
      case Request.SET_LOG_FD:
      case Request.SET_BACKEND_REQ_FD:
      case Request.SET_DEVICE_STATE_FD: {
        if (r === Request.SET_LOG_BASE && rng.chance(0.6)) {
          // {u64 mmap_size; u64 mmap_offset}: mostly a log the random guest memfd can hold, so that pages get marked.
          const p = b(16);
          putU64(p, 0, rng.pick([Math.ceil(MEM / 4096 / 8), 1, 4096, MEM, rng.u32()]));
          putU64(p, 8, rng.pick([0, 0, 8, 4095, rng.u32()]));
          return { payload: p, fds: rng.chance(0.9) ? [this.memfd] : [] };
        }
        const p = b(rng.pick([0, 8, 16, 24]));
        for (let k = 0; k < p.length; k += 4) p.writeUInt32LE(rng.u32(), k);
        return { payload: p, fds: rng.chance(0.8) ? [r === Request.SET_LOG_BASE ? this.memfd : this.eventfd()] : [] };
      }
      default: {
        const p = b(rng.pick([0, 8, 8, 16, 40, rng.below(300)]));
        for (let k = 0; k + 4 <= p.length; k += 4) p.writeUInt32LE(rng.u32(), k);
        return { payload: p, fds: rng.chance(0.1) ? [this.eventfd()] : [] };
      }
    }
  }

  /** Sends one message; false once the back-end has hung up on us. */
  send(): boolean {
    const rng = this.rng;
    if (rng.chance(0.3)) {
      this.scribble();
      return true;
    }
    const r = rng.chance(0.05) ? rng.below(100) : rng.chance(0.4)
      ? rng.pick([Request.SET_MEM_TABLE, Request.SET_VRING_NUM, Request.SET_VRING_ADDR, Request.SET_VRING_BASE, Request.SET_VRING_KICK,
        Request.SET_VRING_CALL, Request.SET_VRING_ENABLE, Request.GET_VRING_BASE, Request.SET_FEATURES, Request.ADD_MEM_REG,
        Request.SET_INFLIGHT_FD])
      : 1 + rng.below(44);
    const { payload, fds } = this.body(r);
    const header = Buffer.alloc(12);
    header.writeUInt32LE(r, 0);
    // Framing damage is rare: the back-end hangs up on it, which ends the connection's deeper traffic.
    header.writeUInt32LE(rng.chance(0.98) ? 0x1 | (rng.chance(0.3) ? 0x8 : 0) : rng.u32(), 4);
    header.writeUInt32LE(rng.chance(0.98) ? payload.length : rng.pick([0, 4, payload.length + 8, 0x1000, rng.u32()]), 8);
    const msg = Buffer.concat([header, rng.chance(0.01) ? payload.subarray(0, rng.below(payload.length + 1)) : payload]);
    try {
      sendMsg(this.sock, msg, fds);
    } catch {
      return false;
    }
    // Kick whatever rings may be running so the worker parses the random bytes as descriptors.
    if (r === Request.SET_VRING_KICK && fds.length === 1) {
      this.kicks.push(fds[0]);
      eventfdWrite(fds[0]);
    }
    return true;
  }

  close(): void {
    closeQuiet(this.sock);
    this.guest.unmap();
    closeQuiet(this.memfd);
    for (const fd of this.fds) closeQuiet(fd);
  }
}

describe('vhost-user daemon under random socket traffic', () => {
  let dir: string;
  let child: ChildProcess;
  let stderr = '';
  const sock = (): string => join(dir, 'blk.sock');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-fuzz-'));
    writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(1 << 20));
    child = await startBackend(`path=${join(dir, 'disk.raw')},socket=${sock()},num_queues=2,queue_size=256`);
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
  });
  afterAll(async () => {
    if (child) await stopBackend(child);
    rmSync(dir, { recursive: true, force: true });
  });

  it('survives every connection, logs no fatal error, and then serves a normal front-end', async () => {
    const rng = new Rng(fuzzSeed(0x76686f73));
    for (let c = 0; c < CONNECTIONS; c++) {
      // Half the connections negotiate INFLIGHT_SHMFD, so that GET/SET_INFLIGHT_FD are served, not refused.
      const f = new Fuzzer(rng, unixConnect(sock()), rng.chance(0.5) ? 0x9209 : 0x8209);
      if (rng.chance(0.7)) f.preamble();
      for (let m = 0; m < MESSAGES && f.send(); m++) {
        if (m % 16 === 15) await new Promise((r) => setTimeout(r, 1));
      }
      // Give the back-end time to act on the last messages (and any kicked ring) before hanging up.
      await new Promise((r) => setTimeout(r, 20));
      f.close();
      expect(child.exitCode, `after connection ${c}: ${stderr.slice(-2000)}`).toBeNull();
      expect(child.signalCode, `after connection ${c}: ${stderr.slice(-2000)}`).toBeNull();
    }
    // The next front-end gets a working disk.
    const client = await BlkVuClient.connect(sock(), { queueSize: 128 });
    try {
      const data = client.buf(4096);
      client.mem.fill(data, 4096, 0x5a);
      const st1 = client.add(0, VIRTIO_BLK_T_OUT, 8, [{ addr: data, len: 4096 }], [], 1);
      client.run(0, 1);
      expect(client.mem.readU8(st1)).toBe(0);
      const back = client.buf(4096);
      const st2 = client.add(0, VIRTIO_BLK_T_IN, 8, [], [{ addr: back, len: 4096 }], 2);
      client.run(0, 1);
      expect(client.mem.readU8(st2)).toBe(0);
      expect(client.mem.slice(back, 4096).every((x) => x === 0x5a)).toBe(true);
    } finally {
      client.close();
    }
    if (process.env.FUZZ_DEBUG) console.log(stderr.split('\n').map((l) => /"msg":"([^"]*)/.exec(l)?.[1] ?? l.slice(0, 80)).reduce((m, k) => m.set(k, (m.get(k) ?? 0) + 1), new Map<string, number>()));
    expect(stderr).not.toMatch(/"level":60|Uncaught|FATAL|RangeError|TypeError/);
  }, 120_000);
});

describe('kumo-virtiofsd under random socket traffic', () => {
  const BIN = fileURLToPath(new URL('../../bin/kumo-virtiofsd.js', import.meta.url));
  const CANARY = 'CANARY-outside-the-share';
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-fs-sockfuzz-'));
    mkdirSync(join(dir, 'share'));
    writeFileSync(join(dir, 'share', 'a'), 'hello');
    writeFileSync(join(dir, 'secret'), CANARY);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // virtiofsd serves one front-end and exits when it goes: a fresh daemon per connection.
  it('ends every connection with a clean exit, never a crash, and leaves everything outside the share alone', async () => {
    const rng = new Rng(fuzzSeed(0x66737a7a));
    for (let c = 0; c < Math.ceil(CONNECTIONS / 4); c++) {
      const sock = join(dir, `fs-${c}.sock`);
      const child = spawn(process.execPath, [BIN, `--socket-path=${sock}`, `--shared-dir=${join(dir, 'share')}`, '--sandbox=chroot', '--xattr'], {
        stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'warn' },
      });
      let stderr = '';
      child.stderr?.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      // A loaded host may take seconds to start node and the worker thread.
      for (let i = 0; i < 600 && !existsSync(sock) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
      expect(existsSync(sock), `connection ${c}: no socket after 15 s: ${stderr.slice(-2000)}`).toBe(true);
      // MQ | REPLY_ACK | CONFIGURE_MEM_SLOTS
      const f = new Fuzzer(rng, unixConnect(sock), 0x8009);
      if (rng.chance(0.8)) f.preamble();
      for (let m = 0; m < MESSAGES && f.send(); m++) {
        if (m % 16 === 15) await new Promise((r) => setTimeout(r, 1));
      }
      await new Promise((r) => setTimeout(r, 20));
      f.close();
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
      expect(child.signalCode, `connection ${c}: ${stderr.slice(-2000)}`).toBeNull();
      expect(child.exitCode, `connection ${c}: ${stderr.slice(-2000)}`).toBe(0);
      expect(stderr).not.toMatch(/"level":60|Uncaught|FATAL|RangeError|TypeError/);
    }
    expect(readFileSync(join(dir, 'secret'), 'utf8')).toBe(CANARY);
  }, 180_000);
});
