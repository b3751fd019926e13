import koffi from 'koffi';
import { constants as osConstants } from 'node:os';
import { KumoError } from '../errors.js';

/** The one libc handle every binding in protocol/sys shares. */
export const libc = koffi.load('libc.so.6');

const errnoNames = new Map<number, string>([
  // Linux errnos Node's os.constants leaves out.
  [77, 'EBADFD'], [117, 'EUCLEAN'], [121, 'EREMOTEIO'],
  ...Object.entries(osConstants.errno).map(([name, n]): [number, string] => [n as number, name]),
]);

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** A failed system call: names the call and the errno. */
export class SysError extends KumoError {
  readonly call: string;
  readonly errno: number;
  readonly code: string;
  constructor(call: string, errno: number, context: Record<string, unknown> = {}) {
    const code = errnoName(errno);
    super(`${call} failed: ${code} (${errno})`, { call, errno, code, ...context });
    this.call = call;
    this.errno = errno;
    this.code = code;
  }
}

export function lastErrno(): number {
  return koffi.errno();
}

/** Throws SysError when a libc call returned a negative value. */
export function check(call: string, ret: number, context?: Record<string, unknown>): number {
  if (ret < 0) throw new SysError(call, koffi.errno(), context);
  return ret;
}

export function checkBig(call: string, ret: bigint, context?: Record<string, unknown>): bigint {
  if (ret < 0n) throw new SysError(call, koffi.errno(), context);
  return ret;
}

/** Pointer-like argument accepted by the `void *` bindings. */
export type PtrArg = Buffer | Uint8Array | ArrayBufferView | bigint | null;

const ioctlPtr = libc.func('ioctl', 'int', ['int', 'ulong', 'void *']);
const ioctlUlong = libc.func('ioctl', 'int', ['int', 'ulong', 'ulong']);

/** ioctl with a pointer argument (struct in/out buffer or raw address). */
export function ioctl(fd: number, req: number, arg: PtrArg): number {
  return check('ioctl', ioctlPtr(fd, req, arg) as number, { fd, req: `0x${req.toString(16)}` });
}

/** ioctl with an integer argument. */
export function ioctlInt(fd: number, req: number, arg: number | bigint): number {
  return check('ioctl', ioctlUlong(fd, req, arg) as number, { fd, req: `0x${req.toString(16)}` });
}

/** Unchecked variants for hot paths that look at the result themselves (e.g. KVM_RUN's EINTR). */
export const rawIoctl = ioctlPtr as (fd: number, req: number, arg: PtrArg) => number;
export const rawIoctlInt = ioctlUlong as (fd: number, req: number, arg: number | bigint) => number;

/** Address of a Buffer/TypedArray's data; valid while the object is alive. */
export function addressOf(buf: ArrayBufferView): bigint {
  return koffi.address(buf) as bigint;
}

const syscall6 = libc.func('syscall', 'long', ['long', 'long', 'long', 'long', 'long', 'long', 'long']);

/** Raw syscall for calls glibc does not wrap (io_uring, openat2, per-thread setresuid...). */
export function rawSyscall(nr: number, ...args: (number | bigint)[]): number {
  const a = [0, 0, 0, 0, 0, 0].map((z, i) => args[i] ?? z);
  return Number(syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]));
}

export function syscallChecked(name: string, nr: number, ...args: (number | bigint)[]): number {
  return check(name, rawSyscall(nr, ...args));
}

export { koffi };
