// kumo-vu net --socket S [--queue-pairs N] [--csum on|off] [--ip A] ping ADDR | udp ADDR:PORT | bench --tx|--rx
import { InvalidArgumentError, type Command } from 'commander';
import { parseCount, parsePositive } from '../options.js';
import { benchFrame, benchRx, benchTx } from './bench.js';
import { ipv4Bytes, ipv4String } from './frames.js';
import { NetNic } from './nic.js';
import { MiniStack } from './stack.js';

interface NetOpts {
  socket: string;
  queuePairs: number;
  queueSize: number;
  csum: boolean;
  ip?: string;
  json?: boolean;
  connectTimeout: number;
}

function onOff(v: string): boolean {
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  throw new InvalidArgumentError('expected on or off');
}

function ipArg(v: string): string {
  try {
    ipv4Bytes(v);
  } catch {
    throw new InvalidArgumentError(`not an IPv4 address: ${v}`);
  }
  return v;
}

function macArg(v: string): string {
  if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(v)) throw new InvalidArgumentError(`not a MAC address: ${v}`);
  return v;
}

/** Our address: --ip, or the peer's address with the last octet changed. */
function guestIp(o: NetOpts, peer: Uint8Array): Uint8Array {
  if (o.ip) return ipv4Bytes(o.ip);
  const ip = peer.slice();
  ip[3] = ip[3] === 2 ? 3 : 2;
  return ip;
}

async function open(o: NetOpts, dirtyLog = false): Promise<NetNic> {
  return NetNic.open({ socket: o.socket, queuePairs: o.queuePairs, queueSize: o.queueSize, csumOffload: o.csum, connectTimeoutMs: o.connectTimeout, dirtyLog });
}

const out = (o: NetOpts, human: string, obj: unknown) => process.stdout.write(o.json ? `${JSON.stringify(obj)}\n` : `${human}\n`);

export function registerNet(program: Command): void {
  const net = program
    .command('net')
    .description('act as a virtio-net NIC in userspace against a vhost-user net back-end')
    .requiredOption('--socket <path>', 'vhost-user socket of the back-end')
    .option('--queue-pairs <n>', 'RX/TX queue pairs to use', parseCount(1, 128), 1)
    .option('--queue-size <n>', 'ring size', parseCount(1, 32768), 256)
    .option('--csum <on|off>', 'negotiate checksum offload (CSUM, GUEST_CSUM)', onOff, true)
    .option('--ip <addr>', 'our IPv4 address (default: the peer address with the last octet 2, or 3)', ipArg)
    .option('--json', 'one JSON object per result on stdout')
    .option('--connect-timeout <ms>', 'keep retrying the socket this long', parseCount(0, 600_000), 10_000);

  net
    .command('ping <addr>')
    .description('ARP-resolve ADDR, then ICMP echo it through the back-end')
    .option('-c, --count <n>', 'echo requests', parseCount(1, 100_000), 3)
    .option('-s, --size <bytes>', 'echo payload size', parseCount(0, 1400), 56)
    .option('--pair <n>', 'queue pair to send on', parseCount(0, 127), 0)
    .option('--dirty-log', 'log dirty pages as a migrating front-end does, and report the RX buffers the back-end left unmarked')
    .action(async (addr: string, c: { count: number; size: number; pair: number; dirtyLog?: boolean }, cmd: Command) => {
      const o = cmd.optsWithGlobals() as NetOpts;
      const peer = ipv4Bytes(ipArg(addr));
      const nic = await open(o, c.dirtyLog === true);
      try {
        const st = new MiniStack(nic, guestIp(o, peer));
        const rtts: number[] = [];
        for (let seq = 1; seq <= c.count; seq++) {
          const rtt = st.ping(peer, seq, { size: c.size, pair: c.pair });
          if (rtt !== null) rtts.push(rtt);
          if (!o.json) out(o, rtt === null ? `no reply for icmp_seq=${seq}` : `${c.size + 8} bytes from ${addr}: icmp_seq=${seq} time=${rtt.toFixed(3)} ms`, null);
        }
        const dirtyLog = nic.dirtyLogReport();
        const summary = { target: addr, from: ipv4String(st.ip), sent: c.count, received: rtts.length, rttMs: rtts, csumOffload: nic.csumOffload, ...(dirtyLog ? { dirtyLog } : {}) };
        const logLine = dirtyLog ? `; dirty log: ${dirtyLog.rxBuffers} RX buffers filled, ${dirtyLog.unmarked} left unmarked` : '';
        out(o, `${c.count} packets transmitted, ${rtts.length} received${logLine}`, summary);
        if (rtts.length !== c.count || (dirtyLog !== null && dirtyLog.unmarked > 0)) process.exitCode = 1;
      } finally {
        nic.close();
      }
    });

  net
    .command('udp <addr:port>')
    .description('send a UDP datagram to ADDR:PORT and wait for the reply (an echo server answers)')
    .option('--message <text>', 'payload', 'hello from kumo-vu')
    .option('--sport <port>', 'our source port', parseCount(1, 65535), 40000)
    .option('--pair <n>', 'queue pair to send on', parseCount(0, 127), 0)
    .option('--timeout <ms>', 'how long to wait for the reply', parseCount(1, 600_000), 3000)
    .option('--no-wait', 'do not wait for a reply')
    .action(async (target: string, c: { message: string; sport: number; pair: number; timeout: number; wait: boolean }, cmd: Command) => {
      const o = cmd.optsWithGlobals() as NetOpts;
      const m = /^(.+):(\d+)$/.exec(target);
      if (!m) throw new InvalidArgumentError('expected ADDR:PORT');
      const peer = ipv4Bytes(ipArg(m[1]));
      const port = parseCount(1, 65535)(m[2]);
      const nic = await open(o);
      try {
        const st = new MiniStack(nic, guestIp(o, peer));
        st.sendUdp(peer, c.sport, port, new TextEncoder().encode(c.message), c.pair);
        let reply: ReturnType<MiniStack['receiveUdp']> = null;
        if (c.wait) reply = st.receiveUdp(c.sport, c.timeout);
        const text = reply ? new TextDecoder().decode(reply.data) : null;
        out(o, reply ? `reply from ${reply.from}:${reply.sport}: ${text}` : c.wait ? 'no reply' : 'sent',
          { sent: c.message, reply: text, from: reply?.from, pair: reply?.pair, csumOffload: nic.csumOffload });
        if (c.wait && !reply) process.exitCode = 1;
      } finally {
        nic.close();
      }
    });

  net
    .command('bench')
    .description('tx: send frames as fast as possible; rx: count frames injected on the host side')
    .option('--tx', 'guest → host')
    .option('--rx', 'host → guest')
    .option('--size <bytes>', 'frame size (64 or 1500 typical)', parseCount(60, 2000), 64)
    .option('--seconds <s>', 'duration', parsePositive, 3)
    .option('--to <addr>', 'host address the frames go to (tx)', ipArg, '192.168.100.1')
    .option('--dst-mac <mac>', 'destination MAC of tx frames (default: ARP-resolve --to)', macArg)
    .action(async (c: { tx?: boolean; rx?: boolean; size: number; seconds: number; to: string; dstMac?: string }, cmd: Command) => {
      const o = cmd.optsWithGlobals() as NetOpts;
      if (!!c.tx === !!c.rx) throw new InvalidArgumentError('give exactly one of --tx or --rx');
      const nic = await open(o);
      try {
        let r;
        if (c.tx) {
          const peer = ipv4Bytes(c.to);
          const st = new MiniStack(nic, guestIp(o, peer));
          const dst = c.dstMac ? Uint8Array.from(c.dstMac.split(':').map((x) => parseInt(x, 16))) : st.resolve(peer);
          r = benchTx(nic, benchFrame(c.size, nic.mac, dst, st.ip, peer), c.seconds);
        } else {
          r = benchRx(nic, c.size, c.seconds, () => process.stdout.write(o.json ? '{"started":true}\n' : 'receiving\n'));
        }
        out(o, `${r.direction} ${r.size} B: ${r.frames} frames in ${r.seconds.toFixed(2)} s = ${(r.pps / 1e6).toFixed(3)} Mpps, ${r.gbps.toFixed(3)} Gbit/s`, r);
      } finally {
        nic.close();
      }
    });
}
