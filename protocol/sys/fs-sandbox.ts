import { libc } from './libc.js';
import { ck, cstr, P, type PathArg } from './fs-path.js';

/** The sandbox calls: namespaces, mounts, pivot_root, chroot, the working directory, umask and rlimits. */

export const RLIMIT_NOFILE = 7;
export const CLONE_FS = 0x200;
export const CLONE_NEWNS = 0x20000;
export const CLONE_NEWPID = 0x20000000;
export const CLONE_NEWNET = 0x40000000;
export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 1 << 18;
export const MS_SLAVE = 1 << 19;
export const MNT_DETACH = 2;

const SYS_pivot_root = 155;

const fchdir_ = libc.func('fchdir', 'int', ['int']);
const chdir_ = libc.func('chdir', 'int', [P]);
const chroot_ = libc.func('chroot', 'int', [P]);
const unshare_ = libc.func('unshare', 'int', ['int']);
const mount_ = libc.func('mount', 'int', [P, P, P, 'ulong', P]);
const umount2_ = libc.func('umount2', 'int', [P, 'int']);
const umask_ = libc.func('umask', 'uint', ['uint']);
const getrlimit_ = libc.func('getrlimit', 'int', ['int', P]);
const setrlimit_ = libc.func('setrlimit', 'int', ['int', P]);

export function fchdir(fd: number): void {
  ck('fchdir', fchdir_(fd), { fd });
}
export function chdir(path: PathArg): void {
  ck('chdir', chdir_(cstr(path)));
}
export function chroot(path: PathArg): void {
  ck('chroot', chroot_(cstr(path)));
}
/** unshare(2) for the calling thread (CLONE_FS / CLONE_NEWNS affect only this thread in a threaded process). */
export function unshare(flags: number): void {
  ck('unshare', unshare_(flags), { flags: `0x${flags.toString(16)}` });
}
export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null = null): void {
  ck('mount', mount_(source === null ? null : cstr(source), cstr(target), fstype === null ? null : cstr(fstype), flags,
    data === null ? null : cstr(data)), { source, target, fstype });
}
export function umount2(target: string, flags: number): void {
  ck('umount2', umount2_(cstr(target), flags), { target });
}
const pivotFn = libc.func('syscall', 'long', ['long', P, P]);
export function pivotRoot(newRoot: string, putOld: string): void {
  ck('pivot_root', pivotFn(SYS_pivot_root, cstr(newRoot), cstr(putOld)), { newRoot, putOld });
}
/** Sets the calling thread's umask (per thread after unshare(CLONE_FS)); returns the old one. */
export function umask(mask: number): number {
  return umask_(mask) as number;
}

export interface Rlimit { cur: bigint; max: bigint }
export function getrlimit(resource: number): Rlimit {
  const b = new BigUint64Array(2);
  ck('getrlimit', getrlimit_(resource, b));
  return { cur: b[0], max: b[1] };
}
export function setrlimit(resource: number, lim: Rlimit): void {
  ck('setrlimit', setrlimit_(resource, new BigUint64Array([lim.cur, lim.max])));
}
