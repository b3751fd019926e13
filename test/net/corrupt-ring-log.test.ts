// A guest that corrupts its TX ring again after every restart (a reset of its NIC in a loop): one error line with a
// stack per restart, unbounded, some 200 lines a second here. Rate-limited now.
import { expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { BackendProc, backendBin } from './harness.js';
import { corruptRingAfterEachRestart } from '../vhost-user/corrupt-ring.js';

const why = netnsUnavailable();

it.skipIf(why !== null)('a TX ring corrupted after every restart is logged rate-limited', async () => {
  const ns = NetNs.create('corruptlog');
  const sock = `/tmp/kumo-net-corruptlog-${process.pid}.sock`;
  const be = new BackendProc(ns.spawn(process.execPath, [backendBin, '--net-backend', `ip=10.79.9.1,mask=255.255.255.0,socket=${sock}`], { env: { ...process.env, KUMO_LOG: 'info' } }));
  try {
    expect(JSON.parse(await be.nextLine(30_000))).toMatchObject({ ready: true });
    await corruptRingAfterEachRestart(sock, 300); // ring 1: TX
    await new Promise((r) => setTimeout(r, 300));
    const lines = be.stderr.match(/virtqueue is corrupt/g)?.length ?? 0;
    expect(lines).toBeGreaterThan(0);
    expect(lines).toBeLessThan(150); // one per restart (300) without the limiter
  } finally {
    await be.stop();
    ns.delete();
  }
}, 60_000);
