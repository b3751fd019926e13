import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LabConsole } from '../../vmm/lab/console.js';
import { jobScript, labEnv, shQuote } from '../../vmm/lab/job.js';

function feed(chunks: string[]): { out: string; code: number | null; boot: string[]; l1: number } {
  let out = '';
  let code: number | null = null;
  let l1 = NaN;
  const c = new LabConsole({ onOutput: (t) => (out += t), onStart: (s) => (l1 = s), onExit: (n) => (code = n), onError: () => {} });
  for (const ch of chunks) c.push(ch);
  return { out, code, boot: c.bootLog, l1 };
}

describe('lab console parsing', () => {
  it('separates boot log from output and finds a marker split across chunks', () => {
    const r = feed(['[ 1.0] kernel says\r\nKUMO-LAB-ST', 'ART uptime=3.52\r\nhello\r\nwor', 'ld\r\nKUMO-LAB-EX', 'IT rc=7\r\n[ 9.9] reboot: Power down\r\n']);
    expect(r.boot).toEqual(['[ 1.0] kernel says']);
    expect(r.l1).toBe(3.52);
    expect(r.out).toBe('hello\nworld\n');
    expect(r.code).toBe(7);
  });

  it('finds the marker after output without a trailing newline', () => {
    const r = feed(['KUMO-LAB-START uptime=1\n', 'no newline', 'KUMO-LAB-EXIT rc=0\n']);
    expect(r.out).toBe('no newline');
    expect(r.code).toBe(0);
  });

  it('reports an exit before the command started (init failure)', () => {
    const r = feed(['KUMO-LAB-ERROR cannot mount virtiofs tag hostroot\nKUMO-LAB-EXIT rc=126\n']);
    expect(r.code).toBe(126);
    expect(r.out).toBe('');
  });
});

describe('lab job script', () => {
  it('runs the command in the given directory with exactly the given environment, quoting safely', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-job-'));
    try {
      const job = path.join(dir, 'job.sh');
      const tricky = `it's "quoted" $HOME \`x\` ; exit 9`;
      fs.writeFileSync(job, jobScript('echo "$V"; pwd; echo "${SECRET:-unset}"; exit 4', dir, { ...labEnv({ V: tricky }, {}), }));
      const r = spawnSync('sh', [job], { encoding: 'utf8', env: { ...process.env, SECRET: 'leak' } });
      expect(r.status).toBe(4);
      expect(r.stdout).toBe(`${tricky}\n${fs.realpathSync(dir)}\nunset\n`);
      expect(shQuote('plain/path-1.2')).toBe('plain/path-1.2');
      expect(() => jobScript('true', '/', { 'BAD NAME': 'x' })).toThrow(/invalid environment/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
