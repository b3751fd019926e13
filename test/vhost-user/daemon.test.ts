import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { Epoll, EPOLLIN } from '../../protocol/sys/epoll.js';
import { closeQuiet, eventfd, eventfdRead, eventfdWrite } from '../../protocol/sys/fd.js';
import { sendMsg, unixConnect } from '../../protocol/sys/socket.js';
import {
  decodeReply, encodeMessage, F_PROTOCOL_FEATURES, guestToUser, ProtocolFeature, protocolFeatures, request, Request,
  VhostUserChannel, VhostUserDaemon, VRING_NOFD_MASK, type Message, type Payload,
} from '../../protocol/vhost-user/index.js';
import { compactLayout, DriverQueue } from '../../protocol/virtqueue/index.js';
import { NULL_CONFIG, nullBackend } from './fixtures/null-backend.js';

const REPLY_ACK = protocolFeatures(ProtocolFeature.REPLY_ACK);
let dir: string;
let sock: string;
let daemon: VhostUserDaemon;
let running: Promise<void>;
const disconnects: (Error | null)[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kumo-vu-daemon-'));
  sock = join(dir, 'vu.sock');
  daemon = new VhostUserDaemon(nullBackend(2), { socketPath: sock, name: 'test-daemon' });
  daemon.on('disconnected', (e) => disconnects.push(e));
  await daemon.start();
  running = daemon.run();
});

afterAll(async () => {
  await daemon.stop();
  await running;
  rmSync(dir, { recursive: true, force: true });
});

/** Async test client: the daemon shares this thread, so replies are awaited, never blocked on. */
class Client {
  readonly ch: VhostUserChannel;
  constructor() {
    this.ch = new VhostUserChannel(unixConnect(sock));
  }
  async call(r: Request, payload: Payload, fds: number[] = [], needReply = false, ack = false): Promise<Message> {
    this.ch.send(request(r, payload, fds, needReply));
    const raw = await this.ch.recvAsync();
    if (raw === null) throw new Error('closed');
    return decodeReply(r, raw.header, raw.payload, raw.fds, ack);
  }
  send(r: Request, payload: Payload, fds: number[] = []): void {
    this.ch.send(request(r, payload, fds));
  }
  /** Resolves true once the daemon has closed the connection. */
  async closedByPeer(): Promise<boolean> {
    try {
      return (await this.ch.recvAsync()) === null;
    } catch {
      return true;
    }
  }
  close(): void {
    this.ch.close();
  }
}

const u64 = (m: Message) => (m.payload.kind === 'u64' ? m.payload.value : -1n);

async function disconnectedWithError(before: number): Promise<Error | null> {
  for (let i = 0; i < 200 && disconnects.length <= before; i++) await new Promise((r) => setTimeout(r, 10));
  return disconnects[before] ?? null;
}

async function stillServes(): Promise<void> {
  const c = new Client();
  expect(u64(await c.call(Request.GET_FEATURES, { kind: 'none' })) & F_PROTOCOL_FEATURES).toBe(F_PROTOCOL_FEATURES);
  // One front-end at a time: once this one is answered, the previous one's disconnect is recorded.
  const before = disconnects.length;
  c.close();
  expect(await disconnectedWithError(before)).toBeNull();
  expect(disconnects.length).toBe(before + 1);
}

/** Acks every feature and the given protocol features; returns `mem`'s one region as a vhost-user region. */
async function setUp(c: Client, mem: GuestMemory, proto: bigint): Promise<{ guestAddr: number; size: number; userAddr: number; mmapOffset: number }> {
  const f = u64(await c.call(Request.GET_FEATURES, { kind: 'none' }));
  c.send(Request.SET_PROTOCOL_FEATURES, { kind: 'u64', value: proto });
  c.send(Request.SET_OWNER, { kind: 'none' });
  c.send(Request.SET_FEATURES, { kind: 'u64', value: f });
  const r = mem.regions[0];
  return { guestAddr: r.guestAddr, size: r.size, userAddr: r.userAddr, mmapOffset: 0 };
}

/** Starts ring 1 (64 entries) over `mem`, makes n chains available and returns the tokens that came back used. */
async function serveOnRing(c: Client, mem: GuestMemory, n: number): Promise<number[]> {
  const kick = eventfd();
  const call = eventfd();
  const ep = new Epoll(4);
  try {
    const layout = compactLayout(0x10_0000, 64);
    const dq = new DriverQueue<number>(mem, layout, { eventIdx: true });
    const user = (gpa: number) => guestToUser(mem, gpa);
    c.send(Request.SET_VRING_NUM, { kind: 'vringState', index: 1, num: 64 });
    c.send(Request.SET_VRING_ADDR, { kind: 'vringAddr', index: 1, flags: 0, desc: user(layout.descAddr), avail: user(layout.availAddr), used: user(layout.usedAddr), log: 0 });
    c.send(Request.SET_VRING_BASE, { kind: 'vringState', index: 1, num: 0 });
    c.send(Request.SET_VRING_CALL, { kind: 'u64', value: 1n }, [call]);
    c.send(Request.SET_VRING_KICK, { kind: 'u64', value: 1n }, [kick]);
    expect(u64(await c.call(Request.SET_VRING_ENABLE, { kind: 'vringState', index: 1, num: 1 }, [], true, true))).toBe(0n);
    for (let i = 0; i < n; i++) dq.add([{ addr: 0x18_0000 + i * 64, len: 16 }], [{ addr: 0x19_0000 + i * 64, len: 16 }], i);
    dq.publish();
    if (dq.kickNeeded()) eventfdWrite(kick);
    ep.add(call, EPOLLIN, 0);
    const got: number[] = [];
    for (let i = 0; i < 100 && got.length < n; i++) {
      await ep.waitAsync(50);
      eventfdRead(call);
      for (const u of dq.takeUsed()) got.push(u.token);
    }
    return got.sort((a, b) => a - b);
  } finally {
    ep.close();
    closeQuiet(kick);
    closeQuiet(call);
  }
}

describe('VhostUserDaemon', () => {
  it('negotiates, acks NEED_REPLY, answers config and queue count', async () => {
    const c = new Client();
    const f = u64(await c.call(Request.GET_FEATURES, { kind: 'none' }));
    expect(f & F_PROTOCOL_FEATURES).toBe(F_PROTOCOL_FEATURES);
    const pf = u64(await c.call(Request.GET_PROTOCOL_FEATURES, { kind: 'none' }));
    expect(pf & REPLY_ACK).toBe(REPLY_ACK);
    c.send(Request.SET_PROTOCOL_FEATURES, { kind: 'u64', value: pf });
    expect(u64(await c.call(Request.SET_OWNER, { kind: 'none' }, [], true, true))).toBe(0n);
    expect(u64(await c.call(Request.SET_FEATURES, { kind: 'u64', value: f }, [], true, true))).toBe(0n);
    expect(u64(await c.call(Request.GET_QUEUE_NUM, { kind: 'none' }))).toBe(2n);
    const cfg = await c.call(Request.GET_CONFIG, { kind: 'config', offset: 4, flags: 0, data: new Uint8Array(8) });
    expect(cfg.payload).toEqual({ kind: 'config', offset: 4, flags: 0, data: NULL_CONFIG.slice(4, 12) });
    // Cloud Hypervisor (rust-vmm) reads the config at VHOST_USER_CONFIG_OFFSET (0x100) and wants that offset back.
    const ch = await c.call(Request.GET_CONFIG, { kind: 'config', offset: 0x104, flags: 0, data: new Uint8Array(8) });
    expect(ch.payload).toEqual({ kind: 'config', offset: 0x104, flags: 0, data: NULL_CONFIG.slice(4, 12) });
    // Read-only config: SET_CONFIG is NACKed, the connection stays up.
    const nack = await c.call(Request.SET_CONFIG, { kind: 'config', offset: 0, flags: 0, data: new Uint8Array(4) }, [], true, true);
    expect(u64(nack)).toBe(1n);
    // GET_VRING_BASE echoes the ring index and returns the base of a ring that never started.
    c.send(Request.SET_VRING_BASE, { kind: 'vringState', index: 1, num: 77 });
    const base = await c.call(Request.GET_VRING_BASE, { kind: 'vringState', index: 1, num: 0 });
    expect(base.payload).toEqual({ kind: 'vringState', index: 1, num: 77 });
    expect(u64(await c.call(Request.GET_STATUS, { kind: 'none' }))).toBe(0n);
    c.close();
  });

  it('runs a ring in a worker: kick → used → call, GET_VRING_BASE stops it with the next avail index', async () => {
    const c = new Client();
    const mem = GuestMemory.anonymous([{ guestAddr: 0x10_0000, size: 1 << 20 }]);
    try {
      const r = await setUp(c, mem, REPLY_ACK);
      const table = { kind: 'memTable' as const, regions: [r] };
      expect(u64(await c.call(Request.SET_MEM_TABLE, table, [mem.regions[0].fd], true, true))).toBe(0n);
      expect(await serveOnRing(c, mem, 5)).toEqual([0, 1, 2, 3, 4]);
      const base = await c.call(Request.GET_VRING_BASE, { kind: 'vringState', index: 1, num: 0 });
      expect(base.payload).toEqual({ kind: 'vringState', index: 1, num: 5 });
    } finally {
      c.close();
      mem.close();
    }
  });

  it('counts a region added again (QEMU: one vhost device per queue pair) and maps it until removed as often', async () => {
    const c = new Client();
    const mem = GuestMemory.anonymous([{ guestAddr: 0x10_0000, size: 1 << 20 }]);
    try {
      const r = await setUp(c, mem, REPLY_ACK | protocolFeatures(ProtocolFeature.CONFIGURE_MEM_SLOTS));
      const region = { kind: 'memRegion' as const, region: r };
      expect(u64(await c.call(Request.ADD_MEM_REG, region, [mem.regions[0].fd], true, true))).toBe(0n);
      expect(u64(await c.call(Request.ADD_MEM_REG, region, [mem.regions[0].fd], true, true))).toBe(0n);
      expect(u64(await c.call(Request.REM_MEM_REG, region, [], true, true))).toBe(0n);
      // One user left: the ring still runs in that memory.
      expect(await serveOnRing(c, mem, 3)).toEqual([0, 1, 2]);
      const base = await c.call(Request.GET_VRING_BASE, { kind: 'vringState', index: 1, num: 0 });
      expect(base.payload).toEqual({ kind: 'vringState', index: 1, num: 3 });
      expect(u64(await c.call(Request.REM_MEM_REG, region, [], true, true))).toBe(0n);
      expect(u64(await c.call(Request.REM_MEM_REG, region, [], true, true))).not.toBe(0n);
      // A region that only overlaps is still a protocol error.
      const before = disconnects.length;
      c.send(Request.ADD_MEM_REG, region, [mem.regions[0].fd]);
      c.send(Request.ADD_MEM_REG, { kind: 'memRegion', region: { ...region.region, userAddr: r.userAddr + 4096 } }, [mem.regions[0].fd]);
      expect(await disconnectedWithError(before)).toBeInstanceOf(Error);
    } finally {
      c.close();
      mem.close();
    }
  });

  const raw = (req: number, flags: number, size: number, body: Uint8Array = new Uint8Array(0)) => {
    const b = new Uint8Array(12 + body.length);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, req, true);
    dv.setUint32(4, flags, true);
    dv.setUint32(8, size, true);
    b.set(body, 12);
    return b;
  };

  const malformed: [string, (c: Client) => void][] = [
    ['a short header', (c) => { sendMsg(c.ch.fd, new Uint8Array([1, 0, 0, 0, 1])); c.close(); }],
    ['an oversized payload', (c) => sendMsg(c.ch.fd, raw(Request.SET_FEATURES, 1, 8192))],
    ['an unknown request', (c) => sendMsg(c.ch.fd, raw(77, 1, 0))],
    ['a bad version', (c) => sendMsg(c.ch.fd, raw(Request.GET_FEATURES, 2, 0))],
    ['SET_VRING_KICK without its fd', (c) => c.send(Request.SET_VRING_KICK, { kind: 'u64', value: 0n })],
    ['GET_FEATURES with an extra fd', (c) => {
      const e = eventfd();
      sendMsg(c.ch.fd, encodeMessage(request(Request.GET_FEATURES, { kind: 'none' })), [e]);
      closeQuiet(e);
    }],
    ['a ring index out of range', (c) => c.send(Request.SET_VRING_NUM, { kind: 'vringState', index: 9, num: 64 })],
    ['a queue size that is not a power of two', (c) => c.send(Request.SET_VRING_NUM, { kind: 'vringState', index: 0, num: 100 })],
    ['misaligned ring addresses', (c) => c.send(Request.SET_VRING_ADDR, { kind: 'vringAddr', index: 0, flags: 0, desc: 8, avail: 0, used: 0, log: 0 })],
    ['an overlapping memory table', (c) => {
      const a = eventfd();
      const b = eventfd();
      const reg = { guestAddr: 0, size: 0x10000, userAddr: 0x1000_0000, mmapOffset: 0 };
      c.send(Request.SET_MEM_TABLE, { kind: 'memTable', regions: [reg, { ...reg, userAddr: 0x2000_0000, guestAddr: 0x8000 }] }, [a, b]);
      closeQuiet(a);
      closeQuiet(b);
    }],
    ['unacked protocol features', (c) => c.send(Request.SET_PROTOCOL_FEATURES, { kind: 'u64', value: 1n << 19n })],
    ['a request with the REPLY flag', (c) => sendMsg(c.ch.fd, raw(Request.GET_FEATURES, 5, 0))],
  ];

  it.each(malformed)('closes the connection on %s and serves the next front-end', async (_name, act) => {
    const c = new Client();
    await c.call(Request.GET_FEATURES, { kind: 'none' });
    const before = disconnects.length;
    act(c);
    const err = await disconnectedWithError(before);
    expect(err).toBeInstanceOf(Error);
    c.close();
    await stillServes();
  });

  it('treats a ring started without a kick fd (0x100) as polled', async () => {
    const c = new Client();
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
    const call = eventfd();
    const ep = new Epoll(4);
    try {
      const f = u64(await c.call(Request.GET_FEATURES, { kind: 'none' }));
      c.send(Request.SET_FEATURES, { kind: 'u64', value: f & ~F_PROTOCOL_FEATURES }); // rings enabled at once
      const r = mem.regions[0];
      c.send(Request.SET_MEM_TABLE, { kind: 'memTable', regions: [{ guestAddr: 0, size: r.size, userAddr: r.userAddr, mmapOffset: 0 }] }, [r.fd]);
      const layout = compactLayout(0x1000, 16);
      const dq = new DriverQueue<number>(mem, layout, { eventIdx: true });
      const user = (gpa: number) => guestToUser(mem, gpa);
      c.send(Request.SET_VRING_NUM, { kind: 'vringState', index: 0, num: 16 });
      c.send(Request.SET_VRING_ADDR, { kind: 'vringAddr', index: 0, flags: 0, desc: user(layout.descAddr), avail: user(layout.availAddr), used: user(layout.usedAddr), log: 0 });
      c.send(Request.SET_VRING_CALL, { kind: 'u64', value: 0n }, [call]);
      c.send(Request.SET_VRING_KICK, { kind: 'u64', value: BigInt(VRING_NOFD_MASK) });
      dq.add([{ addr: 0x8000, len: 8 }], [], 7);
      dq.publish(); // no kick: the worker must find it by polling
      ep.add(call, EPOLLIN, 0);
      let got: number[] = [];
      for (let i = 0; i < 100 && got.length === 0; i++) {
        await ep.waitAsync(50);
        got = dq.takeUsed().map((u) => u.token);
      }
      expect(got).toEqual([7]);
      const base = await c.call(Request.GET_VRING_BASE, { kind: 'vringState', index: 0, num: 0 });
      expect(base.payload).toEqual({ kind: 'vringState', index: 0, num: 1 });
    } finally {
      c.close();
      ep.close();
      closeQuiet(call);
      mem.close();
    }
  });
});
