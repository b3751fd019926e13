import { libc, rawSyscall } from './libc.js';
import { ck, P } from './fs-path.js';

/** The calling thread's own credentials: user and group IDs, supplementary groups. */

const SYS_setresuid = 117;
const SYS_setresgid = 119;
const SYS_setgroups = 116;
const SYS_getgroups = 115;

/** Per-thread credential switch: the raw syscall, because glibc's wrapper changes every thread. -1 keeps a value. */
export function setresuidThread(ruid: number, euid: number, suid: number): void {
  ck('setresuid', rawSyscall(SYS_setresuid, ruid, euid, suid));
}
export function setresgidThread(rgid: number, egid: number, sgid: number): void {
  ck('setresgid', rawSyscall(SYS_setresgid, rgid, egid, sgid));
}
/** Per-thread supplementary groups (raw syscall). */
export function setgroupsThread(groups: number[]): void {
  const b = new Uint32Array(groups);
  ck('setgroups', Number(groupsFn(SYS_setgroups, groups.length, b)));
}
/** syscall(SYS_setgroups or SYS_getgroups, count, list). */
const groupsFn = libc.func('syscall', 'long', ['long', 'size_t', P]);
/** The calling thread's supplementary groups (raw getgroups). */
export function getgroupsThread(): number[] {
  const n = ck('getgroups', Number(groupsFn(SYS_getgroups, 0, null)));
  const b = new Uint32Array(Math.max(1, n));
  const got = ck('getgroups', Number(groupsFn(SYS_getgroups, b.length, b)));
  return [...b.subarray(0, got)];
}
