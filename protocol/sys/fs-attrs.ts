import { libc } from './libc.js';
import { ck, cstr, EMPTY, P, type PathArg } from './fs-path.js';

/** File attributes: mode, owner, times, access checks and extended attributes. */

export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

const fchmodat_ = libc.func('fchmodat', 'int', ['int', P, 'uint', 'int']);
const fchmod_ = libc.func('fchmod', 'int', ['int', 'uint']);
const fchownat_ = libc.func('fchownat', 'int', ['int', P, 'uint', 'uint', 'int']);
const utimensat_ = libc.func('utimensat', 'int', ['int', P, P, 'int']);
const faccessat_ = libc.func('faccessat', 'int', ['int', P, 'int', 'int']);
const fgetxattr_ = libc.func('fgetxattr', 'long', ['int', P, P, 'size_t']);
const fsetxattr_ = libc.func('fsetxattr', 'int', ['int', P, P, 'size_t', 'int']);
const flistxattr_ = libc.func('flistxattr', 'long', ['int', P, 'size_t']);
const fremovexattr_ = libc.func('fremovexattr', 'int', ['int', P]);
const getxattr_ = libc.func('getxattr', 'long', [P, P, P, 'size_t']);
const setxattr_ = libc.func('setxattr', 'int', [P, P, P, 'size_t', 'int']);
const listxattr_ = libc.func('listxattr', 'long', [P, P, 'size_t']);
const removexattr_ = libc.func('removexattr', 'int', [P, P]);

export function fchmodat(dirfd: number, path: PathArg, mode: number, flags = 0): void {
  ck('fchmodat', fchmodat_(dirfd, cstr(path), mode, flags));
}

export function fchmod(fd: number, mode: number): void {
  ck('fchmod', fchmod_(fd, mode), { fd });
}

/** uid/gid of 0xffffffff leave that id unchanged. */
export function fchownat(dirfd: number, path: PathArg, uid: number, gid: number, flags: number): void {
  ck('fchownat', fchownat_(dirfd, path === '' ? EMPTY : cstr(path), uid >>> 0, gid >>> 0, flags));
}

const tsBuf = Buffer.alloc(32);
/** times: [atimeSec, atimeNsec, mtimeSec, mtimeNsec]; nsec may be UTIME_NOW / UTIME_OMIT. */
/** `times`: atime sec, nsec, mtime sec, nsec; a bigint second is taken as the 64-bit two's complement value it holds. */
export function utimensat(dirfd: number, path: PathArg, times: [number | bigint, number, number | bigint, number], flags: number): void {
  for (let i = 0; i < 4; i++) {
    const t = times[i];
    tsBuf.writeBigInt64LE(typeof t === 'bigint' ? BigInt.asIntN(64, t) : BigInt(Math.trunc(t)), i * 8);
  }
  ck('utimensat', utimensat_(dirfd, path === '' ? EMPTY : cstr(path), tsBuf, flags));
}

export const AT_EACCESS = 0x200;
export function faccessat(dirfd: number, path: PathArg, mode: number, flags: number): void {
  ck('faccessat', faccessat_(dirfd, cstr(path), mode, flags));
}

/** With buf null or empty, returns the attribute size. */
export function fgetxattr(fd: number, name: PathArg, buf: Uint8Array | null): number {
  return ck('fgetxattr', fgetxattr_(fd, cstr(name), buf, buf ? buf.length : 0));
}
export function fsetxattr(fd: number, name: PathArg, value: Uint8Array, flags: number): void {
  ck('fsetxattr', fsetxattr_(fd, cstr(name), value, value.length, flags));
}
export function flistxattr(fd: number, buf: Uint8Array | null): number {
  return ck('flistxattr', flistxattr_(fd, buf, buf ? buf.length : 0));
}
export function fremovexattr(fd: number, name: PathArg): void {
  ck('fremovexattr', fremovexattr_(fd, cstr(name)));
}
/** Path forms (follow the last component): used with "N" relative to a cwd of /proc/self/fd. */
export function getxattr(path: PathArg, name: PathArg, buf: Uint8Array | null): number {
  return ck('getxattr', getxattr_(cstr(path), cstr(name), buf, buf ? buf.length : 0));
}
export function setxattr(path: PathArg, name: PathArg, value: Uint8Array, flags: number): void {
  ck('setxattr', setxattr_(cstr(path), cstr(name), value, value.length, flags));
}
export function listxattr(path: PathArg, buf: Uint8Array | null): number {
  return ck('listxattr', listxattr_(cstr(path), buf, buf ? buf.length : 0));
}
export function removexattr(path: PathArg, name: PathArg): void {
  ck('removexattr', removexattr_(cstr(path), cstr(name)));
}
