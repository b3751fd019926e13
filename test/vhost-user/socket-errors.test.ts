// A socket the daemon cannot take is a set-up mistake: one line that says why, exit status 1, no stack.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VhostUserDaemon, VhostUserSocketError } from '../../protocol/vhost-user/index.js';
import { nullBackend } from './fixtures/null-backend.js';

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
});
