#!/bin/busybox sh
# kumo lab (L1) init: load kvm-amd + virtiofs, mount the host root (tag hostroot), bind /dev /proc /sys,
# chroot and run the job script named by kumo.lab=PATH (a host path), report its exit code, power off.
/bin/busybox mkdir -p /proc /sys /dev /host /usr/bin /usr/sbin /sbin /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

finish() {
  echo "KUMO-LAB-EXIT rc=$1"
  sync
  poweroff -f
}

echo "KUMO-LAB-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m" 2>/tmp/insmod.err || echo "KUMO-LAB-WARN insmod $m: $(cat /tmp/insmod.err)"
done < /etc/kumo/modules

job=
for arg in $(cat /proc/cmdline); do
  case "$arg" in kumo.lab=*) job=${arg#kumo.lab=} ;; esac
done
[ -n "$job" ] || { echo "KUMO-LAB-ERROR no kumo.lab=PATH on the kernel command line"; finish 126; }

mount -t virtiofs hostroot /host || { echo "KUMO-LAB-ERROR cannot mount virtiofs tag hostroot"; finish 126; }
mount --bind /dev /host/dev
mount -t devpts devpts /host/dev/pts 2>/dev/null
mount -t tmpfs tmpfs /host/dev/shm 2>/dev/null
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
[ -f "/host$job" ] || { echo "KUMO-LAB-ERROR job script $job not visible in L1"; finish 126; }

echo "KUMO-LAB-START uptime=$(cut -d' ' -f1 /proc/uptime)"
chroot /host /bin/sh "$job" </dev/null 2>&1
finish $?
