import { addressOf, rawSyscall, syscallChecked } from './libc.js';
import { X86_64_SYSCALLS as NR } from './syscalls-x86_64.js';

const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const PR_CAPBSET_DROP = 24;

/** capabilities(7) by number (Linux 5.9+ knows 0..40). */
export const CAP_NAMES = [
  'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid', 'setpcap',
  'linux_immutable', 'net_bind_service', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner',
  'sys_module', 'sys_rawio', 'sys_chroot', 'sys_ptrace', 'sys_pacct', 'sys_admin', 'sys_boot', 'sys_nice',
  'sys_resource', 'sys_time', 'sys_tty_config', 'mknod', 'lease', 'audit_write', 'audit_control', 'setfcap',
  'mac_override', 'mac_admin', 'syslog', 'wake_alarm', 'block_suspend', 'audit_read', 'perfmon', 'bpf',
  'checkpoint_restore',
] as const;
export type CapName = (typeof CAP_NAMES)[number];

/** A capability's number from its name (`sys_admin`, `CAP_SYS_ADMIN`, any case), or -1. */
export function capNumber(name: string): number {
  const n = name.toLowerCase().replace(/^cap_/, '');
  return (CAP_NAMES as readonly string[]).indexOf(n);
}

export interface ThreadCaps {
  effective: bigint;
  permitted: bigint;
  inheritable: bigint;
}

const header = (): Buffer => {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  h.writeInt32LE(0, 4); // 0: the calling thread
  return h;
};

const set64 = (d: Buffer, field: number): bigint =>
  BigInt(d.readUInt32LE(field)) | (BigInt(d.readUInt32LE(12 + field)) << 32n);

/** The calling thread's capability sets (capabilities are per thread in Linux). */
export function threadCaps(): ThreadCaps {
  const h = header();
  const d = Buffer.alloc(24);
  syscallChecked('capget', NR.capget, addressOf(h), addressOf(d));
  return { effective: set64(d, 0), permitted: set64(d, 4), inheritable: set64(d, 8) };
}

/**
 * Keeps only `keep` (capability numbers) in the calling thread's effective, permitted and inheritable
 * sets, and drops the rest from its bounding set where it may (CAP_SETPCAP). Other threads of the process
 * keep theirs. Returns the capabilities the thread still has.
 */
export function restrictThreadCaps(keep: readonly number[]): number[] {
  let mask = 0n;
  for (const c of keep) mask |= 1n << BigInt(c);
  const cur = threadCaps();
  const canDropBounding = (cur.effective & (1n << BigInt(capNumber('setpcap')))) !== 0n;
  if (canDropBounding) {
    for (let c = 0; c < CAP_NAMES.length; c++) {
      // EINVAL: a capability this kernel does not know.
      if ((mask & (1n << BigInt(c))) === 0n) rawSyscall(NR.prctl, PR_CAPBSET_DROP, c, 0, 0, 0);
    }
  }
  const permitted = cur.permitted & mask;
  const next: ThreadCaps = { effective: cur.effective & permitted, permitted, inheritable: cur.inheritable & permitted };
  const d = Buffer.alloc(24);
  const put = (field: number, v: bigint): void => {
    d.writeUInt32LE(Number(v & 0xffff_ffffn), field);
    d.writeUInt32LE(Number(v >> 32n), 12 + field);
  };
  put(0, next.effective);
  put(4, next.permitted);
  put(8, next.inheritable);
  syscallChecked('capset', NR.capset, addressOf(header()), addressOf(d));
  const kept: number[] = [];
  for (let c = 0; c < 64; c++) if ((permitted & (1n << BigInt(c))) !== 0n) kept.push(c);
  return kept;
}

const toggleHeader = header();
const toggleData = Buffer.alloc(24);
const toggleHeaderPtr = addressOf(toggleHeader);
const toggleDataPtr = addressOf(toggleData);

/**
 * Runs `f` with capability `cap` cleared from the calling thread's effective set, and sets it back after
 * (only if the thread had it). The kernel then applies the rules it keeps for unprivileged callers: a write
 * or truncate without CAP_FSETID clears set-user-ID and set-group-ID bits. The sets are read on every use,
 * since a setresuid away from root and back refills the effective set from the permitted one.
 */
export function withoutEffectiveCap<T>(cap: number, f: () => T): T {
  return withEffective(cap, false, f);
}

/**
 * Runs `f` with capability `cap` raised in the calling thread's effective set (where its permitted set has it),
 * and the effective set as it was after: a thread that switched its effective uid away from root keeps only the
 * one capability it needs.
 */
export function withEffectiveCap<T>(cap: number, f: () => T): T {
  return withEffective(cap, true, f);
}

function withEffective<T>(cap: number, on: boolean, f: () => T): T {
  toggleHeader.writeInt32LE(0, 4);
  syscallChecked('capget', NR.capget, toggleHeaderPtr, toggleDataPtr);
  const word = cap < 32 ? 0 : 12;
  const bit = 1 << (cap & 31);
  const eff = toggleData.readUInt32LE(word);
  const permitted = toggleData.readUInt32LE(word + 4);
  if (((eff & bit) !== 0) === on || (on && (permitted & bit) === 0)) return f();
  toggleData.writeUInt32LE((on ? eff | bit : eff & ~bit) >>> 0, word);
  syscallChecked('capset', NR.capset, toggleHeaderPtr, toggleDataPtr);
  try {
    return f();
  } finally {
    toggleData.writeUInt32LE(eff, word);
    rawSyscall(NR.capset, toggleHeaderPtr, toggleDataPtr);
  }
}
