import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { buildFilter } from '../../protocol/sys/seccomp.js';
import { X86_64_SYSCALLS } from '../../protocol/sys/syscalls-x86_64.js';
import { REQUEST_THREAD_SYSCALLS } from '../../backends/virtiofsd/seccomp-policy.js';
import { parseArgs } from '../../backends/virtiofsd/cli.js';

const CHILD = fileURLToPath(new URL('./fixtures/seccomp-child.ts', import.meta.url));

function child(action: string, outside: boolean): { out: string; signal: NodeJS.Signals | null; status: number | null } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD, action, outside ? 'outside' : 'inside'], { encoding: 'utf8', timeout: 30_000 });
  return { out: r.stdout, signal: r.signal, status: r.status };
}

/** Runs a filter the way the kernel does (classic BPF subset used by buildFilter) on one syscall. */
function runFilter(prog: Buffer, arch: number, nr: number): number {
  let acc = 0;
  for (let pc = 0; pc < prog.length / 8;) {
    const code = prog.readUInt16LE(pc * 8);
    const jt = prog.readUInt8(pc * 8 + 2);
    const jf = prog.readUInt8(pc * 8 + 3);
    const k = prog.readUInt32LE(pc * 8 + 4);
    if (code === 0x20) acc = k === 4 ? arch : nr;
    else if (code === 0x06) return k;
    else if (code === 0x15) pc += acc === k ? jt : jf;
    else if (code === 0x35) pc += acc >= k ? jt : jf;
    else throw new Error(`unexpected opcode ${code}`);
    pc++;
  }
  throw new Error('fell off the program');
}

describe('seccomp (per-thread syscall allow-list)', () => {
  it('the filter allows exactly the list, answers the rest with the action, and kills foreign or x32 calls', () => {
    const prog = buildFilter(['read', 'write', 'futex'], 'log');
    const X86_64 = 0xc000003e;
    const ALLOW = 0x7fff0000;
    const LOG = 0x7ffc0000;
    const KILL = 0x80000000;
    expect(runFilter(prog, X86_64, X86_64_SYSCALLS.read)).toBe(ALLOW);
    expect(runFilter(prog, X86_64, X86_64_SYSCALLS.futex)).toBe(ALLOW);
    expect(runFilter(prog, X86_64, X86_64_SYSCALLS.openat)).toBe(LOG);
    expect(runFilter(prog, X86_64, 0x40000000 | X86_64_SYSCALLS.read)).toBe(LOG);
    expect(runFilter(prog, 0x40000003 /* i386 */, X86_64_SYSCALLS.read)).toBe(KILL);
    expect(runFilter(buildFilter(['read'], 'kill'), X86_64, X86_64_SYSCALLS.write)).toBe(KILL);
    // The request thread's whole list fits one jump table, and every name is a real x86-64 syscall.
    const full = buildFilter(REQUEST_THREAD_SYSCALLS, 'kill');
    for (const n of REQUEST_THREAD_SYSCALLS) expect(runFilter(full, X86_64, X86_64_SYSCALLS[n])).toBe(ALLOW);
    expect(runFilter(full, X86_64, X86_64_SYSCALLS.execve)).toBe(KILL);
    expect(runFilter(full, X86_64, X86_64_SYSCALLS.ptrace)).toBe(KILL);
    expect(runFilter(full, X86_64, X86_64_SYSCALLS.socket)).toBe(KILL);
  });

  it('kill and trap end the process on a call outside the list; log lets it through; other threads are untouched', () => {
    for (const action of ['kill', 'log', 'trap', 'none']) {
      const inside = child(action, false);
      expect(inside.status, `${action}: ${inside.out}`).toBe(0);
      expect(inside.out).toContain('worker getpid ok');
      expect(inside.out).toContain('main getppid ok');
    }
    expect(child('kill', true).signal).toBe('SIGSYS');
    expect(child('trap', true).signal).toBe('SIGSYS');
    for (const action of ['log', 'none']) {
      const r = child(action, true);
      expect(r.status).toBe(0);
      expect(r.out).toMatch(/worker getppid \d+/);
      expect(r.out).toContain('main getppid ok');
    }
  });

  it('kumo-virtiofsd takes --seccomp=none|kill|log|trap, kill by default as in virtiofsd', () => {
    const base = ['--socket-path=/tmp/s', '--shared-dir=/tmp'];
    expect(parseArgs(base).seccomp).toBe('kill');
    expect(parseArgs([...base, '--seccomp=log']).seccomp).toBe('log');
    expect(parseArgs([...base, '--seccomp', 'none']).seccomp).toBe('none');
    expect(() => parseArgs([...base, '--seccomp=allow'])).toThrow(/--seccomp must be one of none\|kill\|log\|trap/);
  });
});
