# Boot-to-userspace marker: the guest's own uptime when /init reached this point.
. /etc/kumo/say.sh
say "KUMO-READY uptime=$(uptime_s)"
