// Features are acked at every device start: a guest resetting its NIC in a loop (or a front-end repeating
// SET_FEATURES) got one info line each, some 8,000 lines a second. Rate-limited now; the line still says what was acked.
import { expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { BackendProc, backendBin } from './harness.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/frontend.js';
import { bits, VIRTIO_F_VERSION_1 } from '../../protocol/virtio/index.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';

const why = netnsUnavailable();

it.skipIf(why !== null)('SET_FEATURES in a loop gets a bounded number of "features acked" lines', async () => {
  const ns = NetNs.create('featlog');
  const sock = `/tmp/kumo-net-featlog-${process.pid}.sock`;
  const be = new BackendProc(ns.spawn(process.execPath, [backendBin, '--net-backend', `ip=10.79.9.1,mask=255.255.255.0,socket=${sock}`], { env: { ...process.env, KUMO_LOG: 'info' } }));
  try {
    expect(JSON.parse(await be.nextLine(30_000))).toMatchObject({ ready: true });
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
  } finally {
    await be.stop();
    ns.delete();
  }
}, 60_000);
