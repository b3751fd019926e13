// A socket the daemon cannot take is a set-up mistake: one line that says why, exit status 1, no stack.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VhostUserDaemon, VhostUserSocketError } from '../../protocol/vhost-user/index.js';
import { nullBackend } from './fixtures/null-backend.js';
import { sendMsg, unixConnect } from '../../protocol/sys/socket.js';
import { closeQuiet } from '../../protocol/sys/fd.js';

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kumo-sock-err-'));
  writeFileSync(join(dir, 'file'), 'not a socket');
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function startError(socketPath: string): Promise<unknown> {
  const d = new VhostUserDaemon(nullBackend(1), { socketPath, name: 'test-sock-err' });
  return d.start().then(() => {
    void d.stop();
    return null;
  }, (e: unknown) => e);
}

describe('vhost-user daemon socket errors', () => {
  it('says why it cannot listen: missing directory, a file as directory, a file in the way', async () => {
    const cases: [string, string][] = [
      [join(dir, 'nope', 's.sock'), `its directory ${join(dir, 'nope')} does not exist`],
      [join(dir, 'file', 's.sock'), `a part of ${join(dir, 'file')} is not a directory`],
      [join(dir, 'file'), 'something that is not a socket is in the way'],
      [join('/proc', 's.sock'), 'no socket file can be made in /proc'],
    ];
    for (const [path, why] of cases) {
      const e = await startError(path);
      expect(e).toBeInstanceOf(VhostUserSocketError);
      expect((e as Error).message).toBe(`cannot listen on ${path}: ${why}`);
    }
  });

  it('a path too long for a Unix socket is the same kind of error', async () => {
    const path = join(dir, 'x'.repeat(120), 's.sock');
    const e = await startError(path);
    expect(e).toBeInstanceOf(VhostUserSocketError);
    expect((e as Error).message).toMatch(/^cannot listen on .*: socket path too long/);
  });

  it('client mode: a front-end socket that never answers ends run() with the path and the errno', async () => {
    const path = join(dir, 'nobody.sock');
    const d = new VhostUserDaemon(nullBackend(1), { socketPath: path, mode: 'client', connectTimeoutMs: 300, name: 'test-sock-err' });
    await d.start();
    try {
      const e = await d.run().then(() => null, (err: unknown) => err);
      expect(e).toBeInstanceOf(VhostUserSocketError);
      expect((e as Error).message).toBe(`cannot connect to the front-end at ${path}: ENOENT`);
    } finally {
      await d.stop();
    }
  });

  it('kumo-vhost-user-blk prints one line and exits 1', () => {
    const img = join(dir, 'img');
    writeFileSync(img, Buffer.alloc(1 << 20));
    const sock = join(dir, 'missing', 'blk.sock');
    const bin = fileURLToPath(new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url));
    const r = spawnSync(process.execPath, [bin, '--block-backend', `path=${img},socket=${sock}`], {
      encoding: 'utf8', timeout: 30_000, env: { ...process.env, KUMO_LOG: 'error' },
    });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(`kumo-vhost-user-blk: cannot listen on ${sock}: its directory ${join(dir, 'missing')} does not exist`);
  });

  it('a front-end that goes away with a reply unread is an ordinary disconnect (it was logged as recvmsg EIO, an error)', async () => {
    const socketPath = join(dir, 'reset.sock');
    const d = new VhostUserDaemon(nullBackend(1), { socketPath, name: 'test-sock-reset' });
    await d.start();
    const running = d.run();
    try {
      const ended = new Promise<unknown>((resolve) => d.once('disconnected', resolve));
      const fd = unixConnect(socketPath);
      const getFeatures = Buffer.alloc(12);
      getFeatures.writeUInt32LE(1, 0); // VHOST_USER_GET_FEATURES
      getFeatures.writeUInt32LE(1, 4); // version 1
      sendMsg(fd, getFeatures);
      await new Promise((r) => setTimeout(r, 300));
      closeQuiet(fd); // with the reply unread: the daemon's recvmsg fails ECONNRESET
      expect(await ended).toBeNull();
    } finally {
      await d.stop();
      await running;
    }
  });
});
