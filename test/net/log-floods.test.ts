// What a guest or front-end can make kumo-vhost-user-net write to its log by repeating itself stays bounded
// (WarnLimiter), and the lines still say what happened.
//
// Features are acked at every device start: a guest resetting its NIC in a loop (or a front-end repeating
// SET_FEATURES) got one info line each, some 8,000 lines a second.
//
// A guest that corrupts its TX ring again after every restart (a reset of its NIC in a loop): one error line with a
// stack per restart, unbounded, some 200 lines a second here.
import { expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { BackendProc, backendBin } from './harness.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { bits, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/index.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import { corruptRingAfterEachRestart } from '../vhost-user/corrupt-ring.js';

const why = netnsUnavailable();

/** Runs `body` against a net back-end logging at info level in a private netns; stops both after. */
async function withNetBackend(name: string, body: (sock: string, be: BackendProc) => Promise<void>): Promise<void> {
  const ns = NetNs.create(name);
  const sock = `/tmp/kumo-net-${name}-${process.pid}.sock`;
  const be = new BackendProc(ns.spawn(process.execPath, [backendBin, '--net-backend', `ip=10.79.9.1,mask=255.255.255.0,socket=${sock}`], { env: { ...process.env, KUMO_LOG: 'info' } }));
  try {
    expect(JSON.parse(await be.nextLine(30_000))).toMatchObject({ ready: true });
    await body(sock, be);
  } finally {
    await be.stop();
    ns.delete();
  }
}

it.skipIf(why !== null)('SET_FEATURES in a loop gets a bounded number of "features acked" lines', async () => {
  await withNetBackend('featlog', async (sock, be) => {
    const fe = await VhostUserFrontend.connect(sock, { retryForMs: 5000 });
    const { features } = fe.negotiate(bits(VIRTIO_F_VERSION_1), protocolFeatures(ProtocolFeature.REPLY_ACK));
    for (let i = 0; i < 3000; i++) {
      fe.setFeatures(features);
      if (i % 50 === 0) await new Promise((r) => setTimeout(r, 1)); // lets this process read the back-end's stderr
    }
    fe.getFeatures(); // a round trip: every SET_FEATURES before it was handled
    fe.close();
    await new Promise((r) => setTimeout(r, 300));
    const acked = be.stderr.match(/"msg":"features acked"/g)?.length ?? 0;
    expect(acked).toBeGreaterThan(0);
    expect(acked).toBeLessThan(400); // 3001 without the limiter
    expect(be.stderr).toMatch(/"features":"0x1[0-9a-f]*".*"msg":"features acked"/);
  });
}, 60_000);

it.skipIf(why !== null)('a TX ring corrupted after every restart is logged rate-limited', async () => {
  await withNetBackend('corruptlog', async (sock, be) => {
    await corruptRingAfterEachRestart(sock, 300); // ring 1: TX
    await new Promise((r) => setTimeout(r, 300));
    const lines = be.stderr.match(/virtqueue is corrupt/g)?.length ?? 0;
    expect(lines).toBeGreaterThan(0);
    expect(lines).toBeLessThan(150); // one per restart (300) without the limiter
  });
}, 60_000);
