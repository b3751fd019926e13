// DPDK's virtio-user (dpdk-testpmd) as a third-party front-end of our backend.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { NetNs, netnsUnavailable } from './netns.js';
import { linkStat, startBackend, type BackendProc } from './harness.js';
import { startTestpmd, testpmdUnavailable } from './dpdk.js';

const why = netnsUnavailable() ?? testpmdUnavailable();
if (why) console.warn(`skipping DPDK tests: ${why}`);

const HOST = '10.78.0.1';
const GUEST = '10.78.0.2';
const GUEST_MAC = '52:54:00:78:00:02';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Host → guest UDP for `ms` from many source ports (runs inside the namespace). */
const flood = (ms: number) => `
const d = require('dgram').createSocket('udp4');
const buf = Buffer.alloc(64);
const end = Date.now() + ${ms};
let n = 0;
d.bind(0, '${HOST}', () => {
  const tick = () => {
    for (let i = 0; i < 32; i++) { d.send(buf, 30000 + (n++ % 32), '${GUEST}'); }
    if (Date.now() < end) setImmediate(tick); else setTimeout(() => { console.log(n); d.close(); }, 100);
  };
  tick();
});`;

describe.skipIf(why !== null)('dpdk-testpmd virtio-user against kumo-vhost-user-net (private netns)', () => {
  let ns: NetNs;
  let be: BackendProc;
  let tap: string;
  const sock = `/tmp/kumo-net-dpdk-${process.pid}.sock`;

  beforeAll(async () => {
    ns = NetNs.create('dpdk');
    ({ be, tap } = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=4,queue_size=256`));
    ns.ip('neigh', 'replace', GUEST, 'lladdr', GUEST_MAC, 'dev', tap);
  });
  afterAll(async () => {
    await be?.stop();
    ns?.delete();
  });

  it('txonly: frames testpmd sends arrive on the TAP', async () => {
    const before = linkStat(ns, tap, 'rx_packets');
    const pmd = startTestpmd(`net_virtio_user0,path=${sock},queues=1`, 'txonly');
    await pmd.started;
    await sleep(2000);
    const r = await pmd.stop();
    const got = linkStat(ns, tap, 'rx_packets') - before;
    expect(r.tx, r.output.slice(-2000)).toBeGreaterThan(1000);
    // What testpmd counts as sent was handed to the backend; the TAP saw (nearly) all of it.
    expect(got).toBeGreaterThan(r.tx * 0.9);
  });

  it('io forwarding over 2 queue pairs: host frames reach testpmd and come back to the TAP', async () => {
    const pmd = startTestpmd(`net_virtio_user0,path=${sock},queues=2,mac=${GUEST_MAC}`, 'io', ['--rxq=2', '--txq=2']);
    await pmd.started;
    const before = await be.counters();
    const tapRx = linkStat(ns, tap, 'rx_packets');
    const sent = Number(ns.exec(process.execPath, ['-e', flood(1500)]).trim());
    await sleep(500);
    const r = await pmd.stop();
    const after = await be.counters();
    const back = linkStat(ns, tap, 'rx_packets') - tapRx;
    expect(sent).toBeGreaterThan(100);
    expect(r.rx, r.output.slice(-2000)).toBeGreaterThan(0);
    expect(r.tx).toBeGreaterThan(0);
    expect(back).toBeGreaterThan(0);
    const delta = (p: number, k: string) => after.pairs[p][k] - before.pairs[p][k];
    // Every frame testpmd received came through our RX path (a few may predate the first snapshot).
    const ours = delta(0, 'rxFrames') + delta(1, 'rxFrames');
    expect(Math.abs(ours - r.rx)).toBeLessThanOrEqual(5);
    expect(delta(0, 'rxFrames'), 'pair 0 rx').toBeGreaterThan(0);
    expect(delta(1, 'rxFrames'), 'pair 1 rx').toBeGreaterThan(0);
  });

  it('client=on: the backend dials a listening front-end (testpmd virtio-user server=1)', async () => {
    const csock = `/tmp/kumo-net-dpdk-client-${process.pid}.sock`;
    const pmd = startTestpmd(`net_virtio_user0,path=${csock},queues=1,server=1`, 'txonly');
    for (let i = 0; i < 200 && !existsSync(csock); i++) await sleep(50);
    const c = await startBackend(ns, `ip=10.78.1.1,socket=${csock},client=on,tap=kcl%d,num_queues=2`);
    try {
      await pmd.started;
      const before = linkStat(ns, c.tap, 'rx_packets');
      await sleep(1500);
      const r = await pmd.stop();
      expect(r.tx, r.output.slice(-2000)).toBeGreaterThan(100);
      expect(linkStat(ns, c.tap, 'rx_packets') - before).toBeGreaterThan(100);
    } finally {
      await c.be.stop();
    }
  });
});
