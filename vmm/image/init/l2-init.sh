#!/bin/busybox sh
# kumo test guest (L2) init: mount, load virtio modules, run kumo.script=NAME or kumo.cmd=..., report, power off.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root

cmdline=$(cat /proc/cmdline)
. /etc/kumo/say.sh

say "KUMO-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m" 2>/tmp/insmod.err || echo "KUMO-WARN insmod $m: $(cat /tmp/insmod.err)"
done < /etc/kumo/modules

script=
for arg in $cmdline; do
  case "$arg" in kumo.script=*) script=${arg#kumo.script=} ;; esac
done
rc=0
case "$cmdline" in
  *kumo.cmd=*)
    # kumo.cmd= takes the rest of the command line.
    cmd=${cmdline#*kumo.cmd=}
    sh -c "$cmd"; rc=$? ;;
  *)
    [ -n "$script" ] || script=ready
    if [ -f "/etc/kumo/scripts/$script.sh" ]; then
      sh "/etc/kumo/scripts/$script.sh"; rc=$?
    else
      say "KUMO-ERROR unknown script '$script' (have: $(ls /etc/kumo/scripts | sed 's/\.sh$//' | tr '\n' ' '))"
      rc=127
    fi ;;
esac
say "KUMO-RESULT rc=$rc"
sleep 0.2
sync
poweroff -f
