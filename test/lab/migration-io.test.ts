import { afterEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { MigrationProxy, Qmp } from './fixtures/migration-io.js';
import { stalled, triesAllowed, type Result } from './fixtures/migration-result.js';

// The live-migration fixture's QMP client and stream proxy against fake peers: what keeps one stuck QEMU from holding
// the whole lab run (a CI run once sat 8 minutes on a source that stopped answering).

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

function tmpSock(name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-migio-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, name);
}

/** A fake QEMU monitor: greets, takes qmp_capabilities, then answers each command as `answer` says (null: never). */
async function fakeQmp(answer: (cmd: string) => object | null): Promise<{ file: string; received: string[] }> {
  const file = tmpSock('qmp.sock');
  const received: string[] = [];
  const server = net.createServer((s) => {
    s.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\n');
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const { execute } = JSON.parse(buf.slice(0, nl)) as { execute: string };
        buf = buf.slice(nl + 1);
        received.push(execute);
        if (execute === 'qmp_capabilities') {
          s.write(JSON.stringify({ return: {} }) + '\n');
          continue;
        }
        const a = answer(execute);
        if (a !== null) s.write(JSON.stringify({ event: 'STOP', data: {} }) + '\n' + JSON.stringify(a) + '\n');
      }
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(file, () => r()));
  cleanups.push(() => server.close());
  return { file, received };
}

describe('the migration fixture QMP client', () => {
  it('returns answers past events, and throws with QMP\'s error description', async () => {
    const { file } = await fakeQmp((cmd) => (cmd === 'query-status' ? { return: { status: 'running' } } : { error: { class: 'GenericError', desc: 'no such thing' } }));
    const q = await Qmp.connect(file, 5000, 2000);
    cleanups.push(() => q.close());
    expect(await q.cmd('query-status')).toEqual({ status: 'running' });
    // Kept for the log: a QEMU that went away says why in its last events (SHUTDOWN's reason).
    expect(q.events).toEqual(['STOP {}']);
    await expect(q.cmd('bogus')).rejects.toThrow('bogus: no such thing');
  });

  it('gives up on a command QEMU does not answer, and fails every later one at once instead of pairing it with a late answer', async () => {
    const { file, received } = await fakeQmp((cmd) => (cmd === 'query-migrate' ? null : { return: { ok: cmd } }));
    const q = await Qmp.connect(file, 5000, 300);
    cleanups.push(() => q.close());
    const t0 = Date.now();
    await expect(q.cmd('query-migrate')).rejects.toThrow('query-migrate: QEMU gave no QMP answer within 300 ms');
    expect(Date.now() - t0).toBeLessThan(3000);
    await expect(q.cmd('query-status')).rejects.toThrow('query-status: QMP connection closed');
    expect(received).toEqual(['qmp_capabilities', 'query-migrate']);
  });

  it('fails the waiting command when QEMU goes away', async () => {
    const file = tmpSock('qmp.sock');
    const server = net.createServer((s) => {
      s.write(JSON.stringify({ QMP: {} }) + '\n');
      s.once('data', () => {
        s.write(JSON.stringify({ return: {} }) + '\n');
        s.once('data', () => s.destroy());
      });
    });
    await new Promise<void>((r) => server.listen(file, () => r()));
    cleanups.push(() => server.close());
    const q = await Qmp.connect(file, 5000, 10_000);
    await expect(q.cmd('quit')).rejects.toThrow('QMP connection closed');
  });
});

describe('the migration fixture stream proxy', () => {
  it('forwards the stream, and ends a held source once the destination goes away', async () => {
    const dst = tmpSock('dst.sock');
    const listen = tmpSock('proxy.sock');
    let got = '';
    let dstConn: net.Socket | null = null;
    const dstServer = net.createServer((s) => {
      dstConn = s;
      s.on('data', (d) => (got += d.toString()));
    });
    await new Promise<void>((r) => dstServer.listen(dst, () => r()));
    cleanups.push(() => dstServer.close());
    const proxy = new MigrationProxy(listen, dst);
    await proxy.listening;
    cleanups.push(() => proxy.close());
    // As QEMU's migration thread: it never reads the socket, so an EOF from the proxy alone would not stop it.
    const src = net.connect({ path: listen, allowHalfOpen: true });
    src.on('error', () => undefined);
    let srcClosed = false;
    src.once('close', () => (srcClosed = true));
    src.write('first pass');
    await expect.poll(() => got, { timeout: 5000 }).toBe('first pass');
    // Not a QEMU stream: the framing check says so, and still counts what went through.
    expect(proxy.report()).toMatchObject({ bytes: 10, state: 'bad', checkedTo: 0, closedFirst: null, deliveredAtHangUp: null, errors: [] });
    proxy.hold();
    // More than the socket buffers hold: with the proxy held, the sender is stuck in its writes.
    src.write(Buffer.alloc(16 << 20, 1));
    await new Promise((r) => setTimeout(r, 200));
    expect(got).toBe('first pass');
    expect(srcClosed).toBe(false);
    // The destination fails to load the stream and exits: the source must not wait on the held proxy for good.
    (dstConn as net.Socket | null)?.destroy();
    await expect.poll(() => srcClosed, { timeout: 5000 }).toBe(true);
    // It had the first 10 bytes; of the 16 MiB, what the proxy read before the hold is all it could have been given.
    expect(proxy.report()).toMatchObject({ closedFirst: 'destination', deliveredAtHangUp: 10 });
  });
});

describe('which migration scenarios the fixture retries', () => {
  const H = 'a'.repeat(64);
  const BAD = 'b'.repeat(64);
  const blk = (n: number, h = H): string => `MIG-ROUND ${n} t=1.0 buffers=65536 cached=${h} fresh=${H} direct=${H}\n`;
  const done = (roundsAfter: number, extra: Partial<Result> = {}): Result => ({ backend: 'kumo', status: 'completed', roundsAfter, ...extra });

  it('retries a migration that did not complete, but not one QEMU refused', () => {
    expect(stalled({ backend: 'kumo', status: 'error' }, '', '', 3)).toBe(true);
    expect(stalled({ backend: 'kumo', status: 'timed out (active)' }, '', '', 3)).toBe(true);
    expect(stalled({ backend: 'kumo', status: 'refused' }, '', '', 3)).toBe(false);
  });

  it('gives a try that ended in an L2 guest reset a third attempt, any other stall a second', () => {
    const reset = 'SHUTDOWN {"guest":true,"reason":"guest-reset"}';
    expect(triesAllowed({ backend: 'kumo', status: 'error', sourceEvents: [reset] })).toBe(3);
    expect(triesAllowed({ backend: 'kumo', status: 'error', destinationEvents: ['RESUME {}', reset] })).toBe(3);
    expect(triesAllowed({ backend: 'kumo', status: 'error', sourceEvents: ['SHUTDOWN {"guest":false,"reason":"host-signal"}'] })).toBe(2);
    expect(triesAllowed({ backend: 'kumo', status: 'error' })).toBe(2);
  });

  it('retries a destination that stopped early only while every hash is the same right one', () => {
    const src = blk(1) + blk(2);
    expect(stalled(done(3), src, blk(3) + blk(4) + blk(5), 3)).toBe(false);
    expect(stalled(done(0), src, '', 3)).toBe(true);
    expect(stalled(done(1), src, blk(3), 3)).toBe(true);
    // A stale page showing as a wrong hash is what the test is for: never retried, wherever it shows.
    expect(stalled(done(1), src, blk(3, BAD), 3)).toBe(false);
    expect(stalled(done(0), blk(1) + blk(2, BAD), '', 3)).toBe(false);
    // So is a destination that said why it stopped.
    expect(stalled(done(1), src, blk(3) + 'blk_update_request: I/O error, dev vda\n', 3)).toBe(false);
  });

  it('holds kumo-net rounds to the blob\'s hash', () => {
    const net = (n: number, h: string): string => `MIG-ROUND ${n} t=1.0 got=${h}\n`;
    const r = done(1, { backend: 'kumo-net', blobSha: H });
    expect(stalled(r, net(1, H), net(2, H), 3)).toBe(true);
    // An empty download (nc cut off) hashes to something else: a verdict.
    expect(stalled(r, net(1, H), net(2, BAD), 3)).toBe(false);
  });
});
