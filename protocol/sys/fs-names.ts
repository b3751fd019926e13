import { libc } from './libc.js';
import { ck, cstr, EMPTY, P, type PathArg } from './fs-path.js';

/** Directory entries: creating, linking, removing and renaming names, reading symlinks and directories. */

const SYS_renameat2 = 316;

const readlinkat_ = libc.func('readlinkat', 'long', ['int', P, P, 'size_t']);
const mkdirat_ = libc.func('mkdirat', 'int', ['int', P, 'uint']);
const mknodat_ = libc.func('mknodat', 'int', ['int', P, 'uint', 'uint64']);
const symlinkat_ = libc.func('symlinkat', 'int', [P, 'int', P]);
const linkat_ = libc.func('linkat', 'int', ['int', P, 'int', P, 'int']);
const unlinkat_ = libc.func('unlinkat', 'int', ['int', P, 'int']);
const getdents64_ = libc.func('getdents64', 'long', ['int', P, 'size_t']);

export function readlinkat(dirfd: number, path: PathArg, buf: Uint8Array): number {
  return ck('readlinkat', readlinkat_(dirfd, path === '' ? EMPTY : cstr(path), buf, buf.length));
}

export function mkdirat(dirfd: number, name: PathArg, mode: number): void {
  ck('mkdirat', mkdirat_(dirfd, cstr(name), mode));
}

export function mknodat(dirfd: number, name: PathArg, mode: number, dev: number): void {
  ck('mknodat', mknodat_(dirfd, cstr(name), mode, dev));
}

export function symlinkat(target: PathArg, dirfd: number, name: PathArg): void {
  ck('symlinkat', symlinkat_(cstr(target), dirfd, cstr(name)));
}

export function linkat(olddirfd: number, oldpath: PathArg, newdirfd: number, newpath: PathArg, flags: number): void {
  ck('linkat', linkat_(olddirfd, oldpath === '' ? EMPTY : cstr(oldpath), newdirfd, cstr(newpath), flags));
}

export function unlinkat(dirfd: number, name: PathArg, flags: number): void {
  ck('unlinkat', unlinkat_(dirfd, cstr(name), flags));
}

export function renameat2(olddirfd: number, oldname: PathArg, newdirfd: number, newname: PathArg, flags: number): void {
  ck('renameat2', rawSyscallPaths(SYS_renameat2, olddirfd, cstr(oldname), newdirfd, cstr(newname), flags));
}

const renameFn = libc.func('syscall', 'long', ['long', 'int', P, 'int', P, 'uint']);
function rawSyscallPaths(nr: number, a: number, p1: Buffer, b: number, p2: Buffer, flags: number): number {
  return Number(renameFn(nr, a, p1, b, p2, flags));
}

/** Raw linux_dirent64 records into buf; 0 at end of directory. */
export function getdents64(fd: number, buf: Uint8Array): number {
  return ck('getdents64', getdents64_(fd, buf, buf.length), { fd });
}
