# The demo guest: uses a vhost-user disk, a virtio-fs share and a vhost-user NIC, then powers off.
# Expects: /dev/vda whose first sector starts with a host-written line, virtio-fs tag "shared" with
# hello.txt, and a NIC whose host side is 192.168.249.1/24.
. /etc/kumo/say.sh
say "KUMO-READY uptime=$(uptime_s)"
rc=0

if [ -b /dev/vda ]; then
  say "KUMO-DEMO-BLK sectors=$(cat /sys/block/vda/size) header=$(timeout 10 dd if=/dev/vda bs=64 count=1 2>/dev/null | tr -dc 'A-Za-z0-9 -' | head -c 48)"
  printf 'guest-was-here' | timeout 10 dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null \
    && say "KUMO-DEMO-BLK-WRITE ok" || { say "KUMO-DEMO-BLK-WRITE failed"; rc=1; }
else
  say "KUMO-DEMO-BLK none"; rc=1
fi

mkdir -p /mnt/shared
if timeout 10 mount -t virtiofs shared /mnt/shared; then
  say "KUMO-DEMO-FS $(cat /mnt/shared/hello.txt)"
  echo "written by the guest" > /mnt/shared/from-guest.txt && sync
  say "KUMO-DEMO-FS-LS $(ls /mnt/shared | tr '\n' ' ')"
  umount /mnt/shared
else
  say "KUMO-DEMO-FS mount-failed"; rc=1
fi

nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
if [ -n "$nic" ]; then
  ip link set "$nic" up && ip addr add 192.168.249.2/24 dev "$nic"
  if timeout 20 ping -c 3 -W 3 192.168.249.1 > /tmp/ping.txt 2>&1; then
    say "KUMO-DEMO-NET $(grep -o '[0-9]* packets received' /tmp/ping.txt)"
  else
    say "KUMO-DEMO-NET ping-failed $(tail -n 2 /tmp/ping.txt | tr '\n' ' ')"; rc=1
  fi
else
  say "KUMO-DEMO-NET none"; rc=1
fi
exit $rc
