// VM-level rules for the vhost-user devices (Cloud Hypervisor's VmConfig::validate): shared memory, unique ids.
import { DiskConfig } from './disk.js';
import { ConfigError } from './errors.js';
import { FsConfig } from './fs.js';
import type { MemoryConfig } from './memory.js';
import { NetConfig } from './net.js';

export interface VhostUserDevicesConfig {
  disks: DiskConfig[];
  net: NetConfig[];
  fs: FsConfig[];
}

export function parseVhostUserDevices(o: { disk?: string[]; net?: string[]; fs?: string[] }): VhostUserDevicesConfig {
  return {
    disks: (o.disk ?? []).map((s) => DiskConfig.parse(s)),
    net: (o.net ?? []).map((s) => NetConfig.parse(s)),
    fs: (o.fs ?? []).map((s) => FsConfig.parse(s)),
  };
}

/**
 * Backends map guest RAM from the fds kumo sends, so it must be shareable (memfd with shared=on, or
 * hugepages). Ids must be unique; devices without one get Cloud Hypervisor style ids (_disk0, _net1, _fs2).
 */
export function validateVhostUserDevices(d: VhostUserDevicesConfig, memory: MemoryConfig, bootVcpus?: number): void {
  const all = [...d.disks, ...d.net, ...d.fs];
  if (all.length === 0) return;
  if (bootVcpus !== undefined) checkQueuesPerVcpu(d, bootVcpus);
  if (!memory.shared && !memory.hugepages) {
    throw new ConfigError('vhost-user devices (--disk/--net/--fs) need shared guest memory: add --memory shared=on (or hugepages=on)', {
      shared: memory.shared,
      hugepages: memory.hugepages,
    });
  }
  // Cloud Hypervisor style ids by position (_disk0, _net1, _fs2). Validation may run more than once
  // (parse, then VM creation), so an id equal to its own generated one is accepted.
  const generated = new Map<object, string>();
  let n = 0;
  for (const [list, prefix] of [[d.disks, '_disk'], [d.net, '_net'], [d.fs, '_fs']] as const) {
    for (const c of list) generated.set(c, `${prefix}${n++}`);
  }
  // As Cloud Hypervisor: "__" is reserved; a given id may look like a generated one, but no two devices share one.
  const seen = new Set<string>();
  for (const c of all) {
    if (c.id !== null && c.id.startsWith('__')) {
      throw new ConfigError(`device id "${c.id}" is reserved (ids starting with "__" are kumo's)`, { id: c.id });
    }
    const id = c.id ?? generated.get(c)!;
    if (seen.has(id)) throw new ConfigError(`device id "${id}" is used twice${c.id === null ? ' (given to one device, generated for another)' : ''}`, { id });
    seen.add(id);
  }
  for (const c of all) c.id ??= generated.get(c)!;
  const slots = new Map<number, string>();
  for (const c of all) {
    if (c.pciDeviceId === null) continue;
    const other = slots.get(c.pciDeviceId);
    if (other !== undefined) throw new ConfigError(`pci_device_id=${c.pciDeviceId} is given to both "${other}" and "${c.id}"`, { pci_device_id: c.pciDeviceId });
    slots.set(c.pciDeviceId, c.id!);
  }
  const sockets = new Set<string>();
  for (const c of all) {
    if (sockets.has(c.socket)) throw new ConfigError(`vhost-user socket ${c.socket} is given to two devices`, { socket: c.socket });
    sockets.add(c.socket);
  }
}

/** Cloud Hypervisor's rules: no more queues than boot vCPUs, and a disk's rings above 2 entries (net has one pair). */
function checkQueuesPerVcpu(d: VhostUserDevicesConfig, boot: number): void {
  const tooMany = (what: string, queues: number) => {
    throw new ConfigError(`${what}: num_queues (${queues}) must not exceed the boot vCPUs (${boot})`, { num_queues: queues, boot });
  };
  for (const c of d.disks) {
    if (c.numQueues > boot) tooMany('--disk', c.numQueues);
    if (c.queueSize <= 2) throw new ConfigError(`--disk: queue_size must be above 2, got ${c.queueSize}`, { queue_size: c.queueSize });
  }
  for (const c of d.fs) if (c.numQueues > boot) tooMany('--fs', c.numQueues);
}
