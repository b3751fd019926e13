import { KumoError } from '../errors.js';
import { addressOf, syscallChecked } from './libc.js';
import { X86_64_SYSCALLS, type SyscallName } from './syscalls-x86_64.js';

/** What happens to a syscall outside the allow-list (virtiofsd's `--seccomp` values). */
export type SeccompAction = 'none' | 'kill' | 'log' | 'trap';
export const SECCOMP_ACTIONS: readonly SeccompAction[] = ['none', 'kill', 'log', 'trap'];

const PR_SET_NO_NEW_PRIVS = 38;
const SECCOMP_SET_MODE_FILTER = 1;

const SECCOMP_RET_KILL_PROCESS = 0x8000_0000;
const SECCOMP_RET_TRAP = 0x0003_0000;
const SECCOMP_RET_LOG = 0x7ffc_0000;
const SECCOMP_RET_ALLOW = 0x7fff_0000;
const AUDIT_ARCH_X86_64 = 0xc000_003e;
/** x32 syscalls carry this bit in their number; they share x86-64's arch value, so they are refused by number. */
const X32_SYSCALL_BIT = 0x4000_0000;

// Classic BPF opcodes (linux/filter.h) and struct seccomp_data offsets.
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_JGE_K = 0x35;
const BPF_RET_K = 0x06;
const DATA_NR = 0;
const DATA_ARCH = 4;
const INSN_SIZE = 8;

export class SeccompError extends KumoError {}

function actionValue(action: Exclude<SeccompAction, 'none'>): number {
  return action === 'kill' ? SECCOMP_RET_KILL_PROCESS : action === 'trap' ? SECCOMP_RET_TRAP : SECCOMP_RET_LOG;
}

/**
 * A classic-BPF seccomp program (x86-64) that allows exactly `allowed` and answers anything else, a
 * foreign architecture or an x32 call with `action` (a foreign architecture is always killed).
 */
export function buildFilter(allowed: readonly SyscallName[], action: Exclude<SeccompAction, 'none'>): Buffer {
  const nrs = [...new Set(allowed.map((n) => X86_64_SYSCALLS[n]))].sort((a, b) => a - b);
  // Each JEQ jumps forward to the final ALLOW; a BPF jump offset is one byte.
  if (nrs.length > 250) throw new SeccompError('allow-list too long for one BPF jump table', { count: nrs.length });
  const insns: [number, number, number, number][] = [
    [BPF_LD_W_ABS, 0, 0, DATA_ARCH],
    [BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64],
    [BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS],
    [BPF_LD_W_ABS, 0, 0, DATA_NR],
    [BPF_JGE_K, nrs.length, 0, X32_SYSCALL_BIT],
  ];
  nrs.forEach((nr, i) => insns.push([BPF_JEQ_K, nrs.length - i, 0, nr]));
  insns.push([BPF_RET_K, 0, 0, actionValue(action)]);
  insns.push([BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW]);
  const prog = Buffer.alloc(insns.length * INSN_SIZE);
  insns.forEach(([code, jt, jf, k], i) => {
    prog.writeUInt16LE(code, i * INSN_SIZE);
    prog.writeUInt8(jt, i * INSN_SIZE + 2);
    prog.writeUInt8(jf, i * INSN_SIZE + 3);
    prog.writeUInt32LE(k >>> 0, i * INSN_SIZE + 4);
  });
  return prog;
}

/**
 * Confines the calling thread (and threads it starts later) to `allowed`. Other threads of the process
 * are untouched: Node's main thread keeps loading modules and serving the control socket, while the
 * thread that parses guest requests loses every syscall it has no business making.
 */
export function restrictThreadSyscalls(allowed: readonly SyscallName[], action: SeccompAction): void {
  if (action === 'none') return;
  if (process.arch !== 'x64') throw new SeccompError('seccomp filters are only built for x86-64', { arch: process.arch });
  const prog = buildFilter(allowed, action);
  const fprog = Buffer.alloc(16);
  fprog.writeUInt16LE(prog.length / INSN_SIZE, 0);
  fprog.writeBigUInt64LE(addressOf(prog), 8);
  // Without CAP_SYS_ADMIN the kernel takes a filter only from a thread that cannot gain privileges.
  try {
    syscallChecked('prctl(PR_SET_NO_NEW_PRIVS)', X86_64_SYSCALLS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    syscallChecked('seccomp(SET_MODE_FILTER)', X86_64_SYSCALLS.seccomp, SECCOMP_SET_MODE_FILTER, 0, addressOf(fprog));
  } catch (e) {
    // A container's own filter may refuse nested ones; say how to run without.
    throw new SeccompError(`${(e as Error).message}: the kernel refused the syscall filter (--seccomp=none runs without it)`, { action });
  }
}
