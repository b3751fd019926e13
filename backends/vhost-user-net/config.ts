// --net-backend "ip=..,mask=..,mac=..,host_mac=..,mtu=..,tap=..,socket=..,num_queues=..,queue_size=..,client=on|off"
// Same keys, defaults and meaning as Cloud Hypervisor's vhost_user_net backend.
import { KumoError } from '../../protocol/errors.js';
import { bool, custom, int, parseOptions, str, toOptionString } from '../../protocol/config/options.js';
import { formatMac, parseIPv4, parseMac, validTapName } from '../../protocol/sys/tap.js';

export class NetConfigError extends KumoError {}

const ipv4 = (what: string, dflt: string) =>
  custom<string, { default: string }>(`<${what}>`, (v) => (parseIPv4(v), v), (v) => v, { default: dflt });
const mac = custom<string>('<mac>', (v) => formatMac(parseMac(v)), (v) => v);

const SCHEMA = {
  tap: str({ hint: '<if_name>' }),
  ip: ipv4('ip_addr', '192.168.100.1'),
  mask: ipv4('net_mask', '255.255.255.0'),
  mac,
  host_mac: mac,
  mtu: int({ min: 68, max: 65521 }),
  socket: str({ required: true, hint: '<socket_path>' }),
  num_queues: int({ min: 2, max: 256, default: 2 }),
  queue_size: int({ min: 1, max: 32768, default: 256 }),
  client: bool(false),
};

export class NetBackendConfig {
  static readonly SYNTAX =
    'vhost-user-net backend parameters "ip=<ip_addr>,mask=<net_mask>,mac=<guest_mac>,host_mac=<host_mac>,mtu=<mtu>,' +
    'tap=<if_name>,socket=<socket_path>,num_queues=<number_of_queues>,queue_size=<size_of_each_queue>,client=on|off"';

  /** Host-side address of the TAP. */
  ip = '192.168.100.1';
  mask = '255.255.255.0';
  /** Guest MAC offered in config space (VIRTIO_NET_F_MAC); undefined: the driver picks one. */
  mac: string | undefined;
  /** Host-side MAC of the TAP; undefined: keep the kernel's random one. */
  hostMac: string | undefined;
  /** MTU of the TAP, offered to the guest (VIRTIO_NET_F_MTU) when given. */
  mtu: number | undefined;
  /** TAP name to create or attach to; undefined: a new TAP named by the kernel. */
  tap: string | undefined;
  socket = '';
  numQueues = 2;
  queueSize = 256;
  /** Connect to a listening front-end instead of listening. */
  client = false;

  static parse(input: string): NetBackendConfig {
    const o = parseOptions(input, SCHEMA, { syntax: NetBackendConfig.SYNTAX, what: '--net-backend' });
    const c = new NetBackendConfig();
    c.tap = o.tap;
    c.ip = o.ip;
    c.mask = o.mask;
    c.mac = o.mac;
    c.hostMac = o.host_mac;
    c.mtu = o.mtu;
    c.socket = o.socket;
    c.numQueues = o.num_queues;
    c.queueSize = o.queue_size;
    c.client = o.client;
    c.validate();
    return c;
  }

  get queuePairs(): number {
    return this.numQueues / 2;
  }

  validate(): void {
    const fail = (msg: string, ctx: Record<string, unknown>) => {
      throw new NetConfigError(`--net-backend: ${msg}`, { ...ctx, syntax: NetBackendConfig.SYNTAX });
    };
    if (!this.socket) fail('socket is required', {});
    if (!Number.isInteger(this.numQueues) || this.numQueues < 2 || this.numQueues % 2 !== 0 || this.numQueues > 256) {
      fail('num_queues must be an even number between 2 and 256 (one RX and one TX queue per pair)', { num_queues: this.numQueues });
    }
    const qs = this.queueSize;
    if (!Number.isInteger(qs) || qs < 1 || qs > 32768 || (qs & (qs - 1)) !== 0) {
      fail('queue_size must be a power of two between 1 and 32768', { queue_size: qs });
    }
    for (const [key, v] of [['ip', this.ip], ['mask', this.mask]] as const) {
      try {
        parseIPv4(v);
      } catch {
        fail(`${key} is not an IPv4 address`, { [key]: v });
      }
    }
    const m = parseIPv4(this.mask);
    const bits = ((m[0] << 24) | (m[1] << 16) | (m[2] << 8) | m[3]) >>> 0;
    if (((~bits >>> 0) & ((~bits >>> 0) + 1)) !== 0) fail('mask must be a contiguous netmask', { mask: this.mask });
    for (const [key, v] of [['mac', this.mac], ['host_mac', this.hostMac]] as const) {
      if (v === undefined) continue;
      let b: Uint8Array;
      try {
        b = parseMac(v);
      } catch {
        fail(`${key} is not a MAC address`, { [key]: v });
        return;
      }
      if (b[0] & 1) fail(`${key} must be a unicast MAC address`, { [key]: v });
      if (b.every((x) => x === 0)) fail(`${key} must not be all zeros`, { [key]: v });
    }
    // 65521: a TAP's max_mtu (larger ones the kernel refuses, with an errno).
    if (this.mtu !== undefined && (!Number.isInteger(this.mtu) || this.mtu < 68 || this.mtu > 65521)) {
      fail('mtu must be between 68 and 65521 (a TAP\'s largest)', { mtu: this.mtu });
    }
    const ip = parseIPv4(this.ip);
    if (ip.every((x) => x === 0) || ip[0] >= 224) fail('ip must be a unicast host address (not 0.0.0.0, multicast or broadcast)', { ip: this.ip });
    // The kernel numbers a new interface through one %d; any other % it refuses.
    if (this.tap !== undefined && (!validTapName(this.tap) || this.tap.replace('%d', '').includes('%'))) {
      fail('tap must be an interface name of 1-15 characters [A-Za-z0-9_.-], with at most one %d', { tap: this.tap });
    }
  }

  toJSON(): Record<string, unknown> {
    return {
      ip: this.ip, mask: this.mask, mac: this.mac, host_mac: this.hostMac, mtu: this.mtu, tap: this.tap,
      socket: this.socket, num_queues: this.numQueues, queue_size: this.queueSize, client: this.client,
    };
  }

  /** The option string that parses back to this config. */
  toString(): string {
    return toOptionString(SCHEMA, {
      tap: this.tap, ip: this.ip, mask: this.mask, mac: this.mac, host_mac: this.hostMac, mtu: this.mtu,
      socket: this.socket, num_queues: this.numQueues, queue_size: this.queueSize, client: this.client,
    });
  }
}
