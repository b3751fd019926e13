// Pieces shared by --disk, --net and --fs (Cloud Hypervisor keys and rules for vhost-user devices).
import { int, str } from '../../protocol/config/options.js';
import { ConfigError } from './errors.js';

/** Cloud Hypervisor's rate-limiter keys; accepted by the parser so the message can say why they are refused. */
export const RATE_LIMIT_KEYS = {
  bw_size: int(),
  bw_one_time_burst: int(),
  bw_refill_time: int(),
  ops_size: int(),
  ops_one_time_burst: int(),
  ops_refill_time: int(),
} as const;

export const PCI_KEYS = {
  id: str({ hint: '<device_id>', pattern: /^[A-Za-z0-9_.:-]{1,64}$/ }),
  pci_segment: int({ max: 95 }),
  pci_device_id: int({ max: 31 }),
} as const;

export function refuseRateLimits(what: string, o: Record<string, unknown>): void {
  const given = Object.keys(RATE_LIMIT_KEYS).filter((k) => o[k] !== undefined);
  if (o.rate_limit_group !== undefined) given.push('rate_limit_group');
  if (given.length) {
    throw new ConfigError(`${what}: vhost-user devices do not support rate limiting (${given.join(', ')})`, { keys: given });
  }
}

export function checkPciPlacement(what: string, segment: number | undefined, deviceId: number | null = null): void {
  if (segment !== undefined && segment !== 0) {
    throw new ConfigError(`${what}: pci_segment=${segment} is not supported (kumo has one PCI segment, 0)`, { pci_segment: segment });
  }
  if (deviceId !== null && (!Number.isInteger(deviceId) || deviceId < 1 || deviceId > 31)) {
    throw new ConfigError(`${what}: pci_device_id must be between 1 and 31 (0 is the host bridge), got ${deviceId}`, { pci_device_id: deviceId });
  }
}

export function checkQueueSize(what: string, q: number): void {
  if (!Number.isInteger(q) || q < 1 || q > 32768 || (q & (q - 1)) !== 0) {
    throw new ConfigError(`${what}: queue_size must be a power of two between 1 and 32768, got ${q}`, { queue_size: q });
  }
}

/** sockaddr_un.sun_path holds 108 bytes, its NUL included. */
const SUN_PATH_MAX = 107;

export function requireSocket(what: string, socket: string | undefined): string {
  if (socket === undefined || socket === '') {
    throw new ConfigError(`${what}: vhost_user=on needs socket=<vhost_user_socket_path>`, {});
  }
  const bytes = Buffer.byteLength(socket);
  if (bytes > SUN_PATH_MAX) {
    throw new ConfigError(`${what}: socket path is ${bytes} bytes; a Unix socket path must be at most ${SUN_PATH_MAX}`, { socket });
  }
  return socket;
}
