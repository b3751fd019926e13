// Every command answers --version and -V with its name and package.json's version, and exits 0.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { KUMO_VERSION } from '../../protocol/version.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

describe('--version', () => {
  it('KUMO_VERSION is package.json\'s version', () => {
    expect(KUMO_VERSION).toBe((JSON.parse(readFileSync(`${root}/package.json`, 'utf8')) as { version: string }).version);
  });

  for (const cmd of ['kumo', 'kumo-vu', 'kumo-vhost-user-blk', 'kumo-vhost-user-net', 'kumo-virtiofsd']) {
    it(`${cmd} prints its name and version`, () => {
      for (const flag of ['--version', '-V']) {
        const r = spawnSync(process.execPath, [`${root}/bin/${cmd}.js`, flag], { encoding: 'utf8', timeout: 30_000 });
        expect(r.status, r.stderr).toBe(0);
        expect(r.stdout.trim()).toBe(`${cmd} ${KUMO_VERSION}`);
      }
    });
  }
});
