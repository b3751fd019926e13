import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { NetBackendConfig } from '../../backends/vhost-user-net/config.js';
import { NetBackend, tapOffloads } from '../../backends/vhost-user-net/backend.js';
import type { Tap } from '../../protocol/sys/tap.js';
import { logger } from '../../protocol/log.js';
import { pathOptions } from '../../backends/vhost-user-net/worker.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO } from '../../protocol/sys/tap.js';
import { bits, VIRTIO_F_VERSION_1, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ,
  hasFeature } from '../../protocol/virtio/index.js';

describe('NetBackendConfig (--net-backend)', () => {
  it('applies Cloud Hypervisor defaults', () => {
    const c = NetBackendConfig.parse('socket=/tmp/net.sock');
    expect(c.toJSON()).toEqual({
      ip: '192.168.100.1', mask: '255.255.255.0', mac: undefined, host_mac: undefined, mtu: undefined, tap: undefined,
      socket: '/tmp/net.sock', num_queues: 2, queue_size: 256, client: false,
    });
    expect(c.queuePairs).toBe(1);
  });

  it('parses every key and round-trips through toString()', () => {
    const s = 'tap=vt0,ip=10.0.0.1,mask=255.255.0.0,mac=52:54:00:12:34:56,host_mac=02:AA:bb:cc:dd:ee,mtu=9000,socket=/run/n.sock,num_queues=4,queue_size=1024,client=on';
    const c = NetBackendConfig.parse(s);
    expect(c.hostMac).toBe('02:aa:bb:cc:dd:ee');
    expect(c.queuePairs).toBe(2);
    expect(c.client).toBe(true);
    expect(NetBackendConfig.parse(c.toString()).toJSON()).toEqual(c.toJSON());
  });

  it.each([
    ['ip=1.2.3.4', /socket/],
    ['socket=/s,colour=red', /unknown option "colour"/],
    ['socket=/s,num_queues=3', /even/],
    ['socket=/s,num_queues=0', /num_queues/],
    ['socket=/s,queue_size=300', /power of two/],
    ['socket=/s,ip=300.1.1.1', /"ip"/],
    ['socket=/s,mask=255.0.255.0', /contiguous/],
    ['socket=/s,mac=01:00:5e:00:00:01', /unicast/],
    ['socket=/s,host_mac=zz:00:00:00:00:00', /host_mac/],
    ['socket=/s,mtu=20', /mtu/],
    ['socket=/s,tap=a/b', /tap/],
    ['socket=/s,mtu=65522', /"mtu": expected an integer between 68 and 65521/], // above a TAP's max_mtu: the kernel refused it with a bare EINVAL
    ['socket=/s,ip=0.0.0.0', /ip must be a unicast host address/], // failed later, naming the netmask
    ['socket=/s,tap=x%d%d', /at most one %d/],
    ['socket=/s,tap=a%s', /at most one %d/],
    ['socket=/s,client=maybe', /client/],
    ['socket=/s,socket=/t', /twice/],
  ])('rejects %s with a clear error', (input, msg) => {
    expect(() => NetBackendConfig.parse(input)).toThrow(msg);
  });

  it('error messages carry the syntax', () => {
    expect(() => NetBackendConfig.parse('bogus=1,socket=/s')).toThrow(/ip=<ip_addr>,mask=<net_mask>/);
  });
});

describe('feature-dependent settings', () => {
  it('maps guest receive offloads to TUNSETOFFLOAD bits', () => {
    expect(tapOffloads(0n)).toBe(0);
    expect(tapOffloads(bits(VIRTIO_NET_F_GUEST_TSO4))).toBe(0); // TSO without CSUM is not allowed
    expect(tapOffloads(bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO)))
      .toBe(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO);
  });

  it('sizes headers and frames from the acked features', () => {
    const legacy = pathOptions(0n, 1500, 256);
    expect(legacy.rx).toMatchObject({ hdrLen: 10, mergeable: false, maxFrame: 10 + 1518 });
    const v1 = pathOptions(bits(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4), 1500, 256);
    expect(v1.rx).toMatchObject({ hdrLen: 12, mergeable: true, maxFrame: 12 + 65553 });
    expect(v1.tx).toMatchObject({ hdrLen: 12, maxFrame: 1518, csum: true, tso4: true, tso6: false });
  });

  it('offers the control queue with MQ (a Linux guest refuses MQ without it; Cloud Hypervisor serves it only if offered)', () => {
    for (const pairs of [1, 2]) {
      const tap = { fds: new Array(pairs).fill(-1) } as unknown as Tap;
      const f = new NetBackend(tap, { queuePairs: pairs, queueSize: 256, tapMtu: 1500 }, logger('test')).features();
      expect([hasFeature(f, VIRTIO_NET_F_MQ), hasFeature(f, VIRTIO_NET_F_CTRL_VQ)]).toEqual([true, true]);
    }
  });
});

describe('kumo-vhost-user-net command line', () => {
  it('refuses --net-backend given twice instead of serving the last one (before it touches any TAP)', () => {
    const r = spawnSync(process.execPath, [fileURLToPath(new URL('../../bin/kumo-vhost-user-net.js', import.meta.url)),
      '--net-backend', 'socket=/nonexistent/a.sock,ip=10.9.9.1', '--net-backend=socket=/nonexistent/b.sock'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--net-backend given more than once/);
  });
});
