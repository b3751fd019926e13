// A stand-in for a TAP queue fd: one end of an AF_UNIX datagram socketpair keeps frame boundaries
// for readv/writev the way a TAP does, and the other end plays the host's network stack.
import { libc, check } from '../../protocol/sys/libc.js';

const socketpair = libc.func('socketpair', 'int', ['int', 'int', 'int', 'void *']) as (
  d: number, t: number, p: number, fds: Int32Array) => number;
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

/** [tapSide, hostSide], both non-blocking. */
export function fakeTap(): [number, number] {
  const fds = new Int32Array(2);
  check('socketpair', socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds));
  return [fds[0], fds[1]];
}
