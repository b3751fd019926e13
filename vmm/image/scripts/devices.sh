# Lists PCI and virtio devices, reads the hwrng, writes through hvc0.
. /etc/kumo/say.sh
say "KUMO-READY uptime=$(uptime_s)"
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/vendor" ] || continue
  drv=none
  [ -L "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  say "KUMO-PCI $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") class=$(cat "$d/class") driver=$drv"
done
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d/device" ] || continue
  drv=none
  [ -L "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  say "KUMO-VIRTIO $(basename "$d") device=$(cat "$d/device") driver=$drv"
done
if [ -c /dev/hwrng ]; then
  rng=$(timeout 5 dd if=/dev/hwrng bs=16 count=1 2>/dev/null | hexdump -v -e '/1 "%02x"')
  say "KUMO-HWRNG ${rng:-read-failed} source=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
else
  say "KUMO-HWRNG none"
fi
if [ -c /dev/hvc0 ]; then
  if timeout 5 sh -c 'echo KUMO-HVC-ECHO hello-from-guest > /dev/hvc0'; then say "KUMO-HVC ok"; else say "KUMO-HVC write-failed"; fi
else
  say "KUMO-HVC none"
fi
for b in /sys/block/vd*; do [ -e "$b" ] && say "KUMO-BLK $(basename "$b") sectors=$(cat "$b/size")"; done
for n in /sys/class/net/*; do [ "$(basename "$n")" = lo ] || say "KUMO-NET $(basename "$n") mac=$(cat "$n/address")"; done
exit 0
