// kumo-vu fs run: the script language's replies and its checks on script lines (against the in-process server).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ARITY, ScriptRunner } from '../../vmm/kumo-vu/fs/script.js';
import { LocalShare } from './local-transport.js';

const shares: LocalShare[] = [];
afterEach(() => {
  for (const s of shares.splice(0)) s.close();
});

async function runner(): Promise<{ r: ScriptRunner; dir: string; s: LocalShare }> {
  const s = new LocalShare('kumo-fs-script-');
  shares.push(s);
  await s.client.init();
  return { r: new ScriptRunner(s.client), dir: s.dir, s };
}

describe('kumo-vu fs run', () => {
  it('--help gives each command\'s arguments in order, from the syntax the runner checks counts against', () => {
    const r = spawnSync(process.execPath, [fileURLToPath(new URL('../../bin/kumo-vu.js', import.meta.url)), 'fs', 'run', '--help'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stdout).toContain('chown UID GID PATH');
    expect(r.stdout).toContain('truncate PATH SIZE');
    expect(r.stdout).toContain('copy FROM TO [OFFIN [OFFOUT]]');
    expect(ARITY.chown).toEqual([3, 3]);
    expect(ARITY.copy).toEqual([2, 4]);
    expect(ARITY.syncfs).toEqual([0, 0]);
  });

  it('prints bytes that are not UTF-8 faithfully: different contents and names never print alike', async () => {
    const { r, dir } = await runner();
    writeFileSync(join(dir, 'f1'), Buffer.from([0x80]));
    writeFileSync(join(dir, 'f2'), Buffer.from([0x81]));
    writeFileSync(Buffer.concat([Buffer.from(`${dir}/`), Buffer.from([0xff, 0xfe])]), ''); // a name that is not UTF-8
    writeFileSync(join(dir, 'back'), 'a\\x80');
    expect(await r.runLine('cat f1')).toBe('ok "\\\\x80"');
    expect(await r.runLine('cat f2')).toBe('ok "\\\\x81"');
    // A valid UTF-8 text that happens to contain "\x" is escaped too, so it cannot pass for the bytes.
    expect(await r.runLine('cat back')).toBe('ok "a\\\\\\\\x80"');
    expect(await r.runLine('ls')).toContain('"\\\\xff\\\\xfe":f');
  });

  it('walks ".." in the script, as a guest kernel does, never sending it to the daemon', async () => {
    const { r, dir } = await runner();
    mkdirSync(join(dir, 'd'));
    expect(await r.runLine('stat ..')).toMatch(/^ok type=d/);
    expect(await r.runLine('create d/../f')).toMatch(/^ok /);
    expect(existsSync(join(dir, 'f'))).toBe(true);
  });

  it('answers a missing name from its LOOKUP and sends no UNLINK, RMDIR or RENAME for it', async () => {
    const { r, s } = await runner();
    const sent: string[] = [];
    s.client.unlink = async () => void sent.push('UNLINK');
    s.client.rmdir = async () => void sent.push('RMDIR');
    s.client.rename = async () => void sent.push('RENAME');
    expect(await r.runLine('rm nope')).toBe('err ENOENT');
    expect(await r.runLine('rmdir nope')).toBe('err ENOENT');
    expect(await r.runLine('mv nope x')).toBe('err ENOENT');
    expect(sent).toEqual([]);
  });

  it('refuses arguments out of their field\'s range with the line number, and stops', async () => {
    for (const [line, why] of [
      ['pread f 0 2000000', /line 1: size must be an integer from 0 to 1048576/],
      ['pread f 0 -1', /line 1: size must be an integer/],
      ['chown 1 -5 f', /line 1: gid must be an integer from 0 to 4294967294/],
      ['seek f abc 0', /line 1: whence/],
      ['seek f data 99999999999999999999999', /line 1: seek offset must be a 64-bit integer/],
      ['write "a\\u0000b" x', /line 1: a word may not hold a NUL/],
      [`write f ${'x'.repeat((1 << 20) + 1)}`, /line 1: write data must be at most 1048576 bytes/],
    ] as const) {
      const { r, dir } = await runner();
      writeFileSync(join(dir, 'f'), 'x');
      await expect(r.runScript(line, () => undefined), line.slice(0, 40)).rejects.toThrow(why);
      expect(readFileSync(join(dir, 'f'), 'utf8')).toBe('x'); // nothing was sent: f is whole, no 'a' made
      expect(existsSync(join(dir, 'a'))).toBe(false);
    }
  });
});
