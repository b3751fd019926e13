// kumo-vhost-user-net + kumo-vu net end to end, inside a private network namespace.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { kumoVuNet, startBackend, type BackendProc } from './harness.js';

const why = netnsUnavailable();
if (why) console.warn(`skipping net backend tests: ${why}`);

const HOST = '10.77.0.1';
const GUEST = '10.77.0.2';
const GUEST_MAC = '52:54:00:77:00:02';

const echoServer = `
const d = require('dgram').createSocket('udp4');
d.on('message', (m, r) => d.send(Buffer.concat([Buffer.from('echo:'), m]), r.port, r.address));
d.bind(7777, '${HOST}', () => console.log('ready'));`;

/** Host-side UDP flood to the guest from many source ports (so the multi-queue TAP spreads it). */
const flood = (ms: number) => `
const d = require('dgram').createSocket('udp4');
const buf = Buffer.alloc(64);
const end = Date.now() + ${ms};
let port = 0, sent = 0;
d.bind(0, '${HOST}', () => {
  const tick = () => {
    for (let i = 0; i < 64; i++) { d.send(buf, 20000 + (port++ % 64), '${GUEST}'); sent++; }
    if (Date.now() < end) setImmediate(tick); else setTimeout(() => { console.log(sent); d.close(); }, 100);
  };
  tick();
});`;

describe.skipIf(why !== null)('vhost-user-net backend with kumo-vu (private netns)', () => {
  let ns: NetNs;
  let be: BackendProc;
  let tap: string;
  const sock = `/tmp/kumo-net-test-${process.pid}.sock`;

  beforeAll(async () => {
    ns = NetNs.create('net');
    ({ be, tap } = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,mac=${GUEST_MAC},socket=${sock},num_queues=4,queue_size=256`));
  });
  afterAll(async () => {
    await be?.stop();
    ns?.delete();
  });

  it('resolves the host with ARP and gets ICMP echo replies (checksum offload on)', async () => {
    const r = await kumoVuNet(sock, ['ping', HOST, '-c', '3']);
    expect(r).toMatchObject({ sent: 3, received: 3, from: GUEST, csumOffload: true, exitCode: 0 });
    // The kernel learned the guest's MAC from our ARP request.
    expect(ns.ip('neigh', 'show', 'dev', tap)).toContain(GUEST_MAC);
  });

  it('marks every RX buffer it fills in the dirty log of a migrating front-end', async () => {
    const r = await kumoVuNet(sock, ['ping', HOST, '-c', '3', '--dirty-log']);
    expect(r).toMatchObject({ received: 3, exitCode: 0, dirtyLog: { unmarked: 0 } });
    expect((r.dirtyLog as { rxBuffers: number }).rxBuffers).toBeGreaterThanOrEqual(3);
  });

  it('pings with checksum offload off, and on queue pair 1', async () => {
    expect(await kumoVuNet(sock, ['--csum', 'off', 'ping', HOST, '-c', '2'])).toMatchObject({ received: 2, csumOffload: false });
    expect(await kumoVuNet(sock, ['--queue-pairs', '2', 'ping', HOST, '-c', '2', '--pair', '1'])).toMatchObject({ received: 2 });
  });

  it('exchanges UDP with a host socket, checksum offload on and off', async () => {
    const server = ns.spawn(process.execPath, ['-e', echoServer]);
    try {
      await new Promise<void>((resolve, reject) => {
        server.stdout!.once('data', () => resolve());
        server.once('exit', (c) => reject(new Error(`echo server exited ${c}`)));
      });
      const on = await kumoVuNet(sock, ['udp', `${HOST}:7777`, '--message', 'offload-on']);
      expect(on).toMatchObject({ reply: 'echo:offload-on', from: HOST, csumOffload: true });
      const off = await kumoVuNet(sock, ['--csum', 'off', 'udp', `${HOST}:7777`, '--message', 'offload-off']);
      expect(off).toMatchObject({ reply: 'echo:offload-off', from: HOST, csumOffload: false });
    } finally {
      server.kill();
    }
  });

  it('carries traffic on 2 queue pairs at the same time, both directions', async () => {
    const before = await be.counters();
    // guest → host on both pairs
    const tx = await kumoVuNet(sock, ['--queue-pairs', '2', 'bench', '--tx', '--to', HOST, '--size', '128', '--seconds', '1']);
    expect(tx.frames as number).toBeGreaterThan(100);
    // host → guest: a UDP flood from many source ports, spread over the TAP queues
    ns.ip('neigh', 'replace', GUEST, 'lladdr', GUEST_MAC, 'dev', tap);
    const rxRun = kumoVuNet(sock, ['--queue-pairs', '2', 'bench', '--rx', '--size', '106', '--seconds', '3']);
    await new Promise((r) => setTimeout(r, 1200));
    const sent = Number(ns.exec(process.execPath, ['-e', flood(1000)]).trim());
    const rx = await rxRun;
    expect(sent).toBeGreaterThan(0);
    expect(rx.frames as number).toBeGreaterThan(0);
    const after = await be.counters();
    for (const p of [0, 1]) {
      expect(after.pairs[p].txFrames - before.pairs[p].txFrames, `pair ${p} tx`).toBeGreaterThan(0);
      expect(after.pairs[p].rxFrames - before.pairs[p].rxFrames, `pair ${p} rx`).toBeGreaterThan(0);
    }
  });
});
