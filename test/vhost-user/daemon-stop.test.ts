import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { closeQuiet, eventfd } from '../../protocol/sys/fd.js';
import { unixConnect } from '../../protocol/sys/socket.js';
import {
  decodeReply, F_PROTOCOL_FEATURES, guestToUser, ProtocolFeature, protocolFeatures, request, Request, VhostUserChannel,
  VhostUserDaemon, type Message, type Payload,
} from '../../protocol/vhost-user/index.js';
import { compactLayout } from '../../protocol/virtqueue/index.js';
import { nullBackend } from './fixtures/null-backend.js';
import { stuckBackend } from './fixtures/stuck-backend.js';

// Long enough that "bounded" and "waited it out" stay far apart on a loaded CI machine.
const BLOCK_MS = 15000;
let dir = '';
const cleanup: (() => void)[] = [];

afterEach(() => {
  cleanup.splice(0).reverse().forEach((f) => f());
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Async client: the daemon runs on this thread, so replies are awaited. */
async function call(ch: VhostUserChannel, r: Request, payload: Payload, fds: number[] = [], ack = false): Promise<Message> {
  ch.send(request(r, payload, fds, ack));
  const raw = await ch.recvAsync();
  if (raw === null) throw new Error('closed');
  return decodeReply(r, raw.header, raw.payload, raw.fds, ack);
}

/** Connects and starts ring 0 (left disabled: protocol features are acked). */
async function startRing(sock: string): Promise<VhostUserChannel> {
  const ch = new VhostUserChannel(unixConnect(sock));
  const mem = GuestMemory.anonymous([{ guestAddr: 0, size: 1 << 20 }]);
  const kick = eventfd();
  cleanup.push(() => {
    ch.close();
    mem.close();
    closeQuiet(kick);
  });
  const f = await call(ch, Request.GET_FEATURES, { kind: 'none' });
  ch.send(request(Request.SET_PROTOCOL_FEATURES, { kind: 'u64', value: protocolFeatures(ProtocolFeature.REPLY_ACK) }));
  ch.send(request(Request.SET_FEATURES, { kind: 'u64', value: (f.payload.kind === 'u64' ? f.payload.value : 0n) | F_PROTOCOL_FEATURES }));
  const r = mem.regions[0];
  ch.send(request(Request.SET_MEM_TABLE, { kind: 'memTable', regions: [{ guestAddr: 0, size: r.size, userAddr: r.userAddr, mmapOffset: 0 }] }, [r.fd]));
  const layout = compactLayout(0x1000, 64);
  const user = (gpa: number) => guestToUser(mem, gpa);
  ch.send(request(Request.SET_VRING_NUM, { kind: 'vringState', index: 0, num: 64 }));
  ch.send(request(Request.SET_VRING_ADDR, { kind: 'vringAddr', index: 0, flags: 0, desc: user(layout.descAddr), avail: user(layout.availAddr), used: user(layout.usedAddr), log: 0 }));
  const ok = await call(ch, Request.SET_VRING_KICK, { kind: 'u64', value: 0n }, [kick], true);
  expect(ok.payload).toEqual({ kind: 'u64', value: 0n });
  return ch;
}

describe('VhostUserDaemon.stop()', () => {
  it('is bounded even when a queue worker is stuck in a native call while its ring stops', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-stop-'));
    const sock = join(dir, 'vu.sock');
    const d = new VhostUserDaemon(stuckBackend(BLOCK_MS), { socketPath: sock, name: 'test-stuck', stopTimeoutMs: 500 });
    await d.start();
    const running = d.run();
    await startRing(sock);
    const t0 = Date.now();
    await d.stop();
    await running;
    const took = Date.now() - t0;
    // Without a bound this waits for the stuck worker (BLOCK_MS), then for its exit answer.
    expect(took).toBeLessThan(BLOCK_MS / 3);
  });

  it('removes the socket file it bound when it stops, but not one a newer daemon bound meanwhile', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-stop-'));
    const sock = join(dir, 'vu.sock');
    const a = new VhostUserDaemon(nullBackend(2), { socketPath: sock, name: 'test-unlink' });
    await a.start();
    const running = a.run();
    expect(existsSync(sock)).toBe(true);
    await a.stop();
    await running;
    expect(existsSync(sock)).toBe(false);

    const old = new VhostUserDaemon(nullBackend(2), { socketPath: sock, name: 'test-unlink-old' });
    await old.start();
    // A second daemon on the same path replaces the first one's socket file (as a restart would).
    const fresh = new VhostUserDaemon(nullBackend(2), { socketPath: sock, name: 'test-unlink-new' });
    await fresh.start();
    const oldRun = old.run();
    const freshRun = fresh.run();
    await old.stop();
    await oldRun;
    expect(existsSync(sock)).toBe(true);
    const ch = new VhostUserChannel(unixConnect(sock));
    ch.close();
    await fresh.stop();
    await freshRun;
    expect(existsSync(sock)).toBe(false);
  });

  it('is idempotent: concurrent callers share one stop, and workers are joined', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-stop-'));
    const sock = join(dir, 'vu.sock');
    const d = new VhostUserDaemon(nullBackend(2), { socketPath: sock, name: 'test-stop' });
    await d.start();
    const running = d.run();
    await startRing(sock);
    const a = d.stop();
    const b = d.stop();
    expect(a).toBe(b);
    await Promise.all([a, running]);
  });

  it('process.exit() ends a daemon whose queue workers sit idle (Node joins every worker thread first)', () => {
    const child = fileURLToPath(new URL('./fixtures/exit-while-idle.ts', import.meta.url));
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ['--import', 'tsx', child], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'warn' } });
    expect(r.stdout).toContain('exiting');
    expect(r.signal).toBeNull(); // not killed by the timeout: a worker parked for good in epoll_wait held it
    expect(r.status).toBe(0);
    expect(Date.now() - t0).toBeLessThan(15_000);
  }, 30_000);
});
