import { ImageError } from './errors.js';

/** modules.dep as a map from module path (relative to lib/modules/<rel>) to its direct dependencies. */
export type ModuleDeps = Map<string, string[]>;

export function parseModulesDep(text: string): ModuleDeps {
  const deps: ModuleDeps = new Map();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const colon = line.indexOf(':');
    if (colon < 0) throw new ImageError('malformed modules.dep line', { line });
    const mod = line.slice(0, colon).trim();
    const rest = line.slice(colon + 1).trim();
    deps.set(mod, rest ? rest.split(/\s+/) : []);
  }
  return deps;
}

/** "virtio_pci" / "virtio-pci" / "kvm-amd" → the canonical name the kernel uses (dashes become underscores). */
export function moduleName(modPath: string): string {
  const base = modPath.slice(modPath.lastIndexOf('/') + 1).replace(/\.ko(\.(xz|zst|gz))?$/, '');
  return base.replace(/-/g, '_');
}

/**
 * Load order for `wanted` (module names) and everything they depend on: every module comes after
 * all of its dependencies. Names listed in `builtin` (e.g. rng_core) are skipped.
 */
export function resolveLoadOrder(deps: ModuleDeps, wanted: readonly string[], builtin: ReadonlySet<string> = new Set()): string[] {
  const byName = new Map<string, string>();
  for (const mod of deps.keys()) byName.set(moduleName(mod), mod);
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (mod: string, chain: string[]): void => {
    const s = state.get(mod);
    if (s === 'done') return;
    if (s === 'visiting') throw new ImageError('module dependency cycle', { chain: [...chain, mod] });
    state.set(mod, 'visiting');
    for (const dep of deps.get(mod) ?? []) {
      if (!deps.has(dep)) throw new ImageError('module dependency missing from modules.dep', { module: mod, dep });
      visit(dep, [...chain, mod]);
    }
    state.set(mod, 'done');
    order.push(mod);
  };
  for (const want of wanted) {
    const name = moduleName(want);
    if (builtin.has(name)) continue;
    const mod = byName.get(name);
    if (!mod) throw new ImageError('module not found in modules.dep', { module: want });
    visit(mod, []);
  }
  return order;
}

/** Module names built into the kernel (modules.builtin lists paths). */
export function parseBuiltin(text: string): Set<string> {
  return new Set(text.split('\n').filter((l) => l.trim()).map((l) => moduleName(l.trim())));
}

/** Guest (L2) drivers: everything a kumo test guest may meet. rng_core is built in on Debian cloud. */
export const L2_MODULES = [
  'virtio', 'virtio_ring', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_mmio',
  'virtio_blk', 'failover', 'net_failover', 'virtio_net', 'fuse', 'virtiofs', 'virtio_console',
  'rng_core', 'virtio_rng', 'vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport',
] as const;

/**
 * Lab (L1) modules: a hardware-style KVM plus virtiofs for the host root, tun/vhost for VMMs under test,
 * virtio-blk/net for disks and NICs that QEMU attaches on our back-ends (LabOptions.blkSockets/netSockets),
 * loop for file systems at an offset of such a disk.
 */
export const L1_MODULES = [
  'irqbypass', 'kvm', 'kvm_amd', 'virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev',
  'virtio_pci', 'fuse', 'virtiofs', 'tun', 'vhost_iotlb', 'vhost', 'vhost_net', 'vsock', 'vhost_vsock',
  'virtio_blk', 'failover', 'net_failover', 'virtio_net', 'loop',
] as const;
