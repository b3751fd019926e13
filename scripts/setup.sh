#!/usr/bin/env bash
# Installs what kumo, its tests and its benchmarks need on a fresh Debian 12 machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86       # nested lab (L1), QEMU as a vhost-user front-end, microvm baseline
  qemu-system-common    # qemu-storage-daemon and QEMU's C virtiofsd (peers)
  qemu-utils
  fio                   # io_uring limit for the blk benchmark
  acpica-tools          # iasl: decompiles our ACPI tables in tests
  dpdk-dev              # dpdk-testpmd: virtio-user front-end and vhost PMD peer
  kmod                  # depmod/modinfo for the guest initramfs module order
  busybox-static        # guest and L1 initramfs userland
  lz4 zstd cpio gzip    # cutting vmlinux out of the bzImage (LZ4: bookworm, zstd: backports), packing initramfs
  iproute2              # network namespaces and TAP set-up in net tests
  e2fsprogs python3     # QEMU front-end lab test: ext4 on our disk, xattrs and mmap on our share
  gcc libc6-dev         # tiny C baselines in benchmarks
  uidmap                # newuidmap/newgidmap: kumo-virtiofsd --uid-map tests
  strace util-linux     # fault injection (an older kernel's io_uring_setup), prlimit: restricted-host tests
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
# The guest image builder uses `apt-get download`, which needs package lists.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then $SUDO apt-get update -qq; fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # `npm install`, not `npm ci`: npm 11.19 writes a lock file whose optional platform packages
  # (msgpackr-extract's) its own `npm ci` then rejects; install still follows the lock's versions.
  echo "setup: npm install"
  npm install --no-audit --no-fund --loglevel=error
fi

# Compiled JS starts several times faster than tsx (bin/launch.js uses it while it is fresh).
npm run build --silent >/dev/null 2>&1 || echo "setup: npm run build failed; the launchers fall back to tsx"
