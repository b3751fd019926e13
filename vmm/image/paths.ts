import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (vmm/image/ is two levels below it). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Build cache for guest images; git-ignored (build/). KUMO_IMAGE_DIR overrides it. */
export function imageCacheDir(): string {
  return process.env.KUMO_IMAGE_DIR ?? path.join(REPO_ROOT, 'build', 'image');
}

/** Folder whose *.sh files are baked into the L2 initramfs as selectable test scripts. */
export const SCRIPTS_DIR = path.join(REPO_ROOT, 'vmm', 'image', 'scripts');

export interface ImagePaths {
  /** Kernel release, e.g. "6.1.0-56-cloud-amd64". */
  kernelRelease: string;
  /** ELF vmlinux with a Xen PVH entry note (boot with QEMU microvm, Cloud Hypervisor, kumo). */
  vmlinux: string;
  /** The Debian bzImage as shipped (boot with SeaBIOS or -kernel). */
  bzImage: string;
  /** L2 test initramfs: busybox + virtio modules + /init running kumo.script=NAME. */
  initramfs: string;
  /** L1 lab initramfs: busybox + kvm-amd + virtiofs; runs the lab job. */
  labInitramfs: string;
  /** Extracted module tree (lib/modules/<release>) with modules.dep. */
  modulesDir: string;
  /** Names of the scripts baked into the L2 initramfs (kumo.script=<name>). */
  scripts: string[];
}
