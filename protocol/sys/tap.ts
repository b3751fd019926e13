// TAP devices: /dev/net/tun queues (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_MULTI_QUEUE) and the
// host-side link settings (address, netmask, MAC, MTU, up), done with the classic SIOCSIF* ioctls
// on an AF_INET datagram socket. Everything acts in the calling thread's network namespace.
import { existsSync, readdirSync } from 'node:fs';
import { KumoError } from '../errors.js';
import { libc, check, ioctl, ioctlInt, SysError } from './libc.js';
import { close, openFile } from './fd.js';

export const TUNSETIFF = 0x400454ca;
export const TUNSETPERSIST = 0x400454cb;
export const TUNGETFEATURES = 0x800454cf;
export const TUNSETOFFLOAD = 0x400454d0;
export const TUNGETIFF = 0x800454d2;
export const TUNSETVNETHDRSZ = 0x400454d8;
export const TUNSETQUEUE = 0x400454d9;

export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_ATTACH_QUEUE = 0x0200;
export const IFF_DETACH_QUEUE = 0x0400;

export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;

const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCSIFADDR = 0x8916;
const SIOCSIFNETMASK = 0x891c;
const SIOCSIFMTU = 0x8922;
const SIOCSIFHWADDR = 0x8924;
const SIOCGIFHWADDR = 0x8927;
const SIOCGIFMTU = 0x8921;
const IFF_UP = 0x1;

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const ARPHRD_ETHER = 1;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;

const socketFn = libc.func('socket', 'int', ['int', 'int', 'int']) as (d: number, t: number, p: number) => number;

export class TapError extends KumoError {}

/** Names the kernel accepts: 1..15 bytes, no '/', whitespace or ':'; '%d' lets the kernel number it. */
export function validTapName(name: string): boolean {
  return name.length > 0 && Buffer.byteLength(name) < IFNAMSIZ && /^[A-Za-z0-9_.%-]+$/.test(name) && name !== '.' && name !== '..';
}

function ifreq(name: string): Buffer {
  if (!validTapName(name)) throw new TapError('invalid interface name', { name });
  const b = Buffer.alloc(IFREQ_SIZE);
  b.write(name, 0, 'latin1');
  return b;
}

function ifreqName(b: Buffer): string {
  const end = b.indexOf(0);
  return b.toString('latin1', 0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end);
}

export interface TapOptions {
  /** Interface name, or a pattern with %d; an existing TAP with this name is attached to. */
  name: string;
  /** Number of queue fds to open (one per virtio-net queue pair). */
  queues: number;
  /** virtio-net header size the TAP reads/writes in front of each frame (10 or 12). */
  vnetHdrSize?: number;
  nonBlocking?: boolean;
}

/** A multi-queue TAP: one fd per queue; closing all fds removes a non-persistent TAP. */
export class Tap {
  private closed = false;
  constructor(readonly name: string, readonly fds: readonly number[]) {}

  /** TUN_F_* bits: which offloads the reader (the guest) accepts in frames the TAP hands us. */
  setOffload(flags: number): void {
    ioctlInt(this.fds[0], TUNSETOFFLOAD, flags);
  }

  setVnetHdrSize(size: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(size, 0);
    for (const fd of this.fds) ioctl(fd, TUNSETVNETHDRSZ, b);
  }

  /** False once the interface is gone under us (ip link del): its fds then answer EBADFD to everything. */
  alive(): boolean {
    try {
      ioctl(this.fds[0], TUNGETIFF, Buffer.alloc(IFREQ_SIZE));
      return true;
    } catch (e) {
      if (e instanceof SysError && e.code === 'EBADFD') return false;
      throw e;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) close(fd);
  }
}

/**
 * Attaches or detaches one queue fd of a multi-queue TAP. The kernel only steers frames to attached
 * queues, so queues whose virtio ring is not running must be detached or their frames are stranded.
 */
export function setTapQueueAttached(fd: number, attached: boolean): void {
  const req = Buffer.alloc(IFREQ_SIZE);
  req.writeUInt16LE(attached ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE, IFNAMSIZ);
  try {
    ioctl(fd, TUNSETQUEUE, req);
  } catch (e) {
    // Attaching an attached queue (or detaching a detached one) is EINVAL: the state is already right.
    if (!(e instanceof SysError && e.code === 'EINVAL')) throw e;
  }
}

/**
 * Opens (creating or attaching to) a TAP with virtio-net headers: single-queue for one queue, as Cloud Hypervisor opens
 * it (a second process then gets EBUSY), unless the existing interface is multi-queue; multi-queue for more, refused
 * when another process holds queues of it too (the kernel would spread our frames over its queues).
 */
export function openTap(opts: TapOptions): Tap {
  if (!Number.isInteger(opts.queues) || opts.queues < 1 || opts.queues > 256) {
    throw new TapError('TAP queue count must be 1..256', { queues: opts.queues });
  }
  const fds: number[] = [];
  let name = opts.name;
  let multi = opts.queues > 1;
  try {
    for (let i = 0; i < opts.queues; i++) {
      const flags = O_RDWR | O_CLOEXEC | (opts.nonBlocking === false ? 0 : O_NONBLOCK);
      const fd = openFile('/dev/net/tun', flags);
      fds.push(fd);
      const req = ifreq(name);
      try {
        try {
          attachTap(fd, req, multi);
        } catch (e) {
          // An existing multi-queue TAP (ip tuntap add ... multi_queue) takes a single queue only as one of several.
          if (multi || !(e instanceof SysError && e.code === 'EINVAL')) throw e;
          multi = true;
          attachTap(fd, req, true);
        }
      } catch (e) {
        throw new TapError(`cannot attach TAP ${name}`, { name, queue: i, cause: (e as Error).message, hint: attachHint(e, name) });
      }
      name = ifreqName(req);
    }
    if (multi) {
      const held = tapQueueCount(name);
      if (held !== null && held > opts.queues) {
        throw new TapError(`TAP ${name} is in use by another process (it has ${held} queues, ${opts.queues} of them ours)`, { name, held });
      }
    }
    const tap = new Tap(name, fds);
    tap.setVnetHdrSize(opts.vnetHdrSize ?? 12);
    return tap;
  } catch (e) {
    for (const fd of fds) close(fd);
    throw e;
  }
}

function attachTap(fd: number, req: Buffer, multi: boolean): void {
  req.writeUInt16LE(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0), IFNAMSIZ);
  ioctl(fd, TUNSETIFF, req);
}

function attachHint(e: unknown, name: string): string | undefined {
  if (!(e instanceof SysError)) return undefined;
  if (e.code === 'EBUSY') return 'the TAP is in use by another process';
  if (e.code !== 'EINVAL') return undefined;
  return existsSync(`/sys/class/net/${name}`)
    ? 'an existing interface with this name is not a TAP, or a single-queue TAP asked for several queues'
    : 'not a name the kernel accepts for a new interface (one %d at most)';
}

/** The queues a multi-queue TAP has attached, by anyone (its real_num_tx_queues); null when sysfs does not say. */
function tapQueueCount(name: string): number | null {
  try {
    return readdirSync(`/sys/class/net/${name}/queues`).filter((q) => q.startsWith('tx-')).length;
  } catch {
    return null;
  }
}

/** TUNGETFEATURES: which IFF_* flags this kernel's tun driver supports. */
export function tunFeatures(): number {
  const fd = openFile('/dev/net/tun', O_RDWR | O_CLOEXEC);
  try {
    const b = Buffer.alloc(4);
    ioctl(fd, TUNGETFEATURES, b);
    return b.readUInt32LE(0);
  } finally {
    close(fd);
  }
}

function withInetSocket<T>(fn: (fd: number) => T): T {
  const fd = check('socket', socketFn(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  try {
    return fn(fd);
  } finally {
    close(fd);
  }
}

export function parseIPv4(s: string): Uint8Array {
  const parts = s.split('.');
  const out = new Uint8Array(4);
  if (parts.length !== 4) throw new TapError('invalid IPv4 address', { value: s });
  for (let i = 0; i < 4; i++) {
    const p = parts[i];
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) throw new TapError('invalid IPv4 address', { value: s });
    out[i] = Number(p);
  }
  return out;
}

export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})$/.exec(s);
  if (!m) throw new TapError('invalid MAC address', { value: s });
  return Uint8Array.from(m.slice(1).map((h) => parseInt(h, 16)));
}

export function formatMac(mac: Uint8Array): string {
  return Array.from(mac.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}

function sockaddrIn(req: Buffer, addr: Uint8Array): void {
  req.writeUInt16LE(AF_INET, IFNAMSIZ);
  req.set(addr, IFNAMSIZ + 4);
}

function ifIoctl(call: string, name: string, req: number, b: Buffer): void {
  withInetSocket((s) => {
    try {
      ioctl(s, req, b);
    } catch (e) {
      throw new TapError(`${call} failed on ${name}`, { name, cause: (e as Error).message });
    }
  });
}

export interface LinkSettings {
  ip?: Uint8Array;
  mask?: Uint8Array;
  mac?: Uint8Array;
  mtu?: number;
  up?: boolean;
}

/** Configures the host side of a link: address, netmask, MAC, MTU, then brings it up. */
export function configureLink(name: string, s: LinkSettings): void {
  if (s.mac) {
    const b = ifreq(name);
    b.writeUInt16LE(ARPHRD_ETHER, IFNAMSIZ);
    b.set(s.mac.subarray(0, 6), IFNAMSIZ + 2);
    ifIoctl('SIOCSIFHWADDR', name, SIOCSIFHWADDR, b);
  }
  if (s.mtu !== undefined) {
    const b = ifreq(name);
    b.writeInt32LE(s.mtu, IFNAMSIZ);
    ifIoctl('SIOCSIFMTU', name, SIOCSIFMTU, b);
  }
  if (s.ip) {
    const b = ifreq(name);
    sockaddrIn(b, s.ip);
    ifIoctl('SIOCSIFADDR', name, SIOCSIFADDR, b);
  }
  if (s.mask) {
    const b = ifreq(name);
    sockaddrIn(b, s.mask);
    ifIoctl('SIOCSIFNETMASK', name, SIOCSIFNETMASK, b);
  }
  if (s.up !== undefined) {
    const b = ifreq(name);
    ifIoctl('SIOCGIFFLAGS', name, SIOCGIFFLAGS, b);
    const flags = b.readUInt16LE(IFNAMSIZ);
    b.writeUInt16LE(s.up ? flags | IFF_UP : flags & ~IFF_UP, IFNAMSIZ);
    ifIoctl('SIOCSIFFLAGS', name, SIOCSIFFLAGS, b);
  }
}

export function linkMac(name: string): Uint8Array {
  const b = ifreq(name);
  ifIoctl('SIOCGIFHWADDR', name, SIOCGIFHWADDR, b);
  return Uint8Array.from(b.subarray(IFNAMSIZ + 2, IFNAMSIZ + 8));
}

export function linkMtu(name: string): number {
  const b = ifreq(name);
  ifIoctl('SIOCGIFMTU', name, SIOCGIFMTU, b);
  return b.readInt32LE(IFNAMSIZ);
}
