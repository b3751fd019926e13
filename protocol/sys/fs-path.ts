import { check } from './libc.js';

/** Path arguments of the fs calls (see fs.ts): a string (UTF-8) or raw bytes, as a guest name need not be UTF-8. */

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;

/** koffi's type for a pointer argument. */
export const P = 'void *';

export type PathArg = string | Uint8Array;

/** A NUL-terminated copy of a path (strings are UTF-8 encoded). */
export function cstr(p: PathArg): Buffer {
  if (typeof p === 'string') return Buffer.from(p + '\0', 'utf8');
  const b = Buffer.allocUnsafe(p.length + 1);
  b.set(p, 0);
  b[p.length] = 0;
  return b;
}
/** An empty path, for the AT_EMPTY_PATH forms. */
export const EMPTY = cstr('');

/** check() of a libc or syscall return value (a long comes back as a bigint). */
export function ck(call: string, ret: number | bigint, ctx?: Record<string, unknown>): number {
  return check(call, Number(ret), ctx);
}
