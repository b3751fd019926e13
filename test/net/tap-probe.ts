// Run inside a test namespace: opens a TAP (argv: name queues [ip mask mac mtu]), configures it,
// prints {name, fds, mac, mtu} as one JSON line, and keeps the TAP open until stdin closes.
import { configureLink, formatMac, linkMac, linkMtu, openTap, parseIPv4, parseMac } from '../../protocol/sys/tap.js';

const [name, queues, ip, mask, mac, mtu] = process.argv.slice(2);
try {
  const tap = openTap({ name, queues: Number(queues) });
  configureLink(tap.name, {
    mac: mac ? parseMac(mac) : undefined,
    mtu: mtu ? Number(mtu) : undefined,
    ip: ip ? parseIPv4(ip) : undefined,
    mask: mask ? parseIPv4(mask) : undefined,
    up: true,
  });
  process.stdout.write(JSON.stringify({ name: tap.name, fds: tap.fds.length, mac: formatMac(linkMac(tap.name)), mtu: linkMtu(tap.name) }) + '\n');
  process.stdin.resume();
  process.stdin.on('end', () => {
    tap.close();
    process.exit(0);
  });
} catch (e) {
  process.stdout.write(JSON.stringify({ error: (e as Error).message, context: (e as { context?: unknown }).context }) + '\n');
  process.exit(1);
}
