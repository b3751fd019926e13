// The back-end against a driver that refills as a Linux guest does, lowers its queue pairs, or comes after another one; and a TAP an operator changes under it.
import { afterEach, describe, expect, it } from 'vitest';
import { NetNs, netnsUnavailable } from './netns.js';
import { linkStat, startBackend, type BackendProc } from './harness.js';
import { VuDevice } from '../../vmm/kumo-vu/device.js';
import { GuestMemory } from '../../protocol/memory/index.js';
import { compactLayout, DriverQueue, GuestAllocator } from '../../protocol/virtqueue/index.js';
import { closeQuiet, eventfd, eventfdWrite } from '../../protocol/sys/fd.js';
import { ProtocolFeature, protocolFeatures } from '../../protocol/vhost-user/index.js';
import {
  bits, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
} from '../../protocol/virtio/index.js';

const why = netnsUnavailable();
if (why) console.warn(`skipping RX refill / TAP change tests: ${why}`);

const HOST = '10.86.0.1';
const GUEST = '10.86.0.2';
const GUEST_MAC = '52:54:00:86:00:02';
const HDR = 12;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const PROTOCOL = protocolFeatures(ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG);

describe.skipIf(why !== null)('kumo-vhost-user-net RX buffers and TAP changes (private netns)', () => {
  let ns: NetNs | null = null;
  let be: BackendProc | null = null;
  let dev: VuDevice | null = null;
  const sock = `/tmp/kumo-net-refill-${process.pid}.sock`;
  afterEach(async () => {
    try {
      dev?.close();
    } catch {
      // back-end gone
    }
    await be?.stop();
    ns?.delete();
    dev = null;
    be = null;
    ns = null;
  });

  it('delivers every frame to a small ring refilled as Linux refills it (once half is free), GSO acked', async () => {
    ns = NetNs.create('refill');
    const started = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=2,queue_size=256`);
    be = started.be;
    ns.ip('neigh', 'replace', GUEST, 'lladdr', GUEST_MAC, 'dev', started.tap);
    const ring = 64;
    dev = await VuDevice.connect({
      socket: sock,
      features: bits(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6),
      protocolFeatures: PROTOCOL,
      connectTimeoutMs: 10_000,
    });
    dev.start(2, ring, 4 << 20);
    const d = dev;
    const mem = d.mem!;
    const rx = d.queues[0];
    // 1536-byte buffers (Linux's smallest mergeable size): 64 of them hold less than one 64 KiB GSO frame.
    const free: number[] = [];
    for (let i = 0; i < ring; i++) free.push(d.buffer(1536, 64));
    const addrOf = new Map<number, number>();
    let token = 0;
    const refill = () => {
      while (free.length > 0) {
        const a = free.pop()!;
        addrOf.set(token, a);
        rx.dq.add([], [{ addr: a, len: 1536 }], token++);
      }
      rx.kick();
    };
    refill();
    await sleep(100);
    const frames = 100;
    const sender = ns.spawn(process.execPath, ['-e',
      `const d=require('dgram').createSocket('udp4');let i=0;const t=setInterval(()=>{d.send(Buffer.from('pkt'+i),4444,'${GUEST}');` +
      `if(++i>=${frames}){clearInterval(t);setTimeout(()=>d.close(),100)}},2)`]);
    let udp = 0;
    let rest = 0;
    for (const end = Date.now() + 10_000; udp < frames && Date.now() < end;) {
      let used: { token: number; len: number }[] = [];
      try {
        used = d.waitUsed(rx, 100);
      } catch (e) {
        if (!/timed out/.test((e as Error).message)) throw e;
        await sleep(1);
      }
      for (const u of used) {
        const a = addrOf.get(u.token)!;
        if (rest === 0) {
          rest = mem.readU16(a + 10);
          if (mem.readU8(a + HDR + 23) === 17) udp++;
        }
        rest--;
        free.push(a);
      }
      // virtnet_receive → try_fill_recv: only once more than min(budget, ring)/2 buffers are free.
      if (free.length > Math.min(64, ring) / 2) refill();
    }
    sender.kill();
    expect(udp).toBe(frames);
  }, 60_000);

  it('hands a new front-end none of the frames the TAP queued under the previous one\'s offloads (NEEDS_CSUM it never acked)', async () => {
    ns = NetNs.create('stale');
    const started = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=2`);
    be = started.be;
    ns.ip('neigh', 'replace', GUEST, 'lladdr', GUEST_MAC, 'dev', started.tap);
    const n = ns;
    const send = (count: number) => n.exec(process.execPath, ['-e',
      `const d=require('dgram').createSocket('udp4');let i=0;const s=()=>d.send(Buffer.alloc(100),4444,'${GUEST}',()=>{if(++i<${count})s();else d.close()});s()`]);
    // The first front-end takes checksum offload and posts no RX buffers: the host's datagrams wait in the TAP.
    const a = await VuDevice.connect({ socket: sock, features: bits(VIRTIO_F_VERSION_1, VIRTIO_NET_F_GUEST_CSUM), protocolFeatures: PROTOCOL, connectTimeoutMs: 10_000 });
    a.start(2, 256, 1 << 20);
    send(5);
    await sleep(200);
    a.close();
    await sleep(300);
    dev = await VuDevice.connect({ socket: sock, features: bits(VIRTIO_F_VERSION_1), protocolFeatures: PROTOCOL, connectTimeoutMs: 10_000 });
    dev.start(2, 256, 1 << 20);
    const mem = dev.mem!;
    const rx = dev.queues[0];
    const bufs = new Map<number, number>();
    for (let t = 0; t < 16; t++) {
      const b = dev.buffer(1600, 64);
      bufs.set(t, b);
      rx.dq.add([], [{ addr: b, len: 1600 }], t);
    }
    rx.kick();
    await sleep(200);
    send(1);
    const flags: number[] = [];
    for (const end = Date.now() + 5000; flags.length === 0 && Date.now() < end;) {
      try {
        for (const u of dev.waitUsed(rx, 200)) flags.push(mem.readU8(bufs.get(u.token)!));
      } catch (e) {
        if (!/timed out/.test((e as Error).message)) throw e;
        await sleep(1);
      }
    }
    await sleep(200);
    try {
      for (const u of dev.waitUsed(rx, 50)) flags.push(mem.readU8(bufs.get(u.token)!));
    } catch {
      // nothing more
    }
    // The datagram sent after it started (and any frame of the host's own), none with VIRTIO_NET_HDR_F_NEEDS_CSUM.
    expect(flags.length).toBeGreaterThan(0);
    expect(flags.filter((f) => f !== 0)).toEqual([]);
  }, 60_000);

  it('detaches the TAP queue of an RX ring the guest disables before answering, so no flow lands there and is lost', async () => {
    ns = NetNs.create('mqoff');
    const started = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=4,queue_size=256`);
    be = started.be;
    ns.ip('neigh', 'replace', GUEST, 'lladdr', GUEST_MAC, 'dev', started.tap);
    dev = await VuDevice.connect({ socket: sock, features: bits(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MQ), protocolFeatures: PROTOCOL, connectTimeoutMs: 10_000 });
    dev.start(4, 256, 8 << 20);
    const d = dev;
    const mem = d.mem!;
    const rxq = [d.queues[0], d.queues[2]];
    const addr = [new Map<number, number>(), new Map<number, number>()];
    let token = 0;
    for (const p of [0, 1]) {
      for (let i = 0; i < 200; i++) {
        const a = d.buffer(2048);
        addr[p].set(token, a);
        rxq[p].dq.add([], [{ addr: a, len: 2048 }], token++);
      }
      rxq[p].kick();
    }
    await sleep(200);
    const n = ns;
    // 32 flows (source ports), which the TAP spreads over its attached queues.
    const send = (tag: string) => n.exec(process.execPath, ['-e',
      `const dg=require('dgram');let i=0;(function go(){if(i>=32)return;const s=dg.createSocket('udp4');` +
      `s.bind(20000+i,()=>{s.send(Buffer.from('${tag}-'+i),4444,'${GUEST}',()=>{s.close();i++;go()})})})()`]);
    const count = (tag: string): number[] => [0, 1].map((p) => {
      let k = 0;
      for (let u = rxq[p].dq.takeUsed(); u.length > 0; u = rxq[p].dq.takeUsed()) {
        for (const x of u) if (Buffer.from(mem.slice(addr[p].get(x.token)!, x.len)).includes(`${tag}-`)) k++;
      }
      return k;
    });
    send('A');
    await sleep(500);
    const a = count('A');
    expect(a[0] + a[1]).toBe(32);
    d.frontend.setVringEnable(2, false); // the guest lowers its queue pairs to 1
    send('B');
    await sleep(500);
    expect(count('B')).toEqual([32, 0]);
  }, 60_000);

  it('exits with an error naming the TAP when it is deleted under the back-end, instead of failing every front-end to come', async () => {
    ns = NetNs.create('tapdel');
    const started = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=2`);
    be = started.be;
    ns.ip('link', 'del', started.tap);
    for (let i = 0; i < 100 && be.exited === null; i++) await sleep(50);
    expect(be.exited).toBe(1);
    expect(be.stderr).toContain('the TAP was deleted');
  }, 30_000);

  it('sends the frames a guest queued before its TX ring started, once the ring is enabled (they were dropped)', async () => {
    ns = NetNs.create('earlytx');
    const started = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=2`);
    be = started.be;
    dev = await VuDevice.connect({ socket: sock, features: bits(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF), protocolFeatures: PROTOCOL, connectTimeoutMs: 10_000 });
    const fe = dev.frontend;
    const base = 0x100000;
    const mem = GuestMemory.anonymous([{ guestAddr: base, size: 4 << 20 }]);
    const alloc = new GuestAllocator(base, 4 << 20);
    fe.setMemTable(mem);
    const before = linkStat(ns, started.tap, 'rx_packets');
    const fds: number[] = [];
    try {
      for (const i of [0, 1]) {
        const layout = compactLayout(alloc.allocOrThrow(compactLayout(0, 256).end, 4096), 256);
        const dq = new DriverQueue<number>(mem, layout, { eventIdx: false });
        if (i === 1) {
          // Queued (and kicked) by the guest before the VMM got round to starting the ring: kumo's VMM activates
          // after the guest's DRIVER_OK write has returned.
          for (let k = 0; k < 5; k++) {
            const f = new Uint8Array(HDR + 60);
            f.fill(0xff, HDR, HDR + 6);
            f.set([0x02, 0, 0, 0, 0, 0x42], HDR + 6);
            f[HDR + 12] = 0x88; // local experimental ethertype
            f[HDR + 13] = 0xb5;
            const a = alloc.allocOrThrow(f.length, 64);
            mem.write(a, f);
            dq.add([{ addr: a, len: f.length }], [], k);
          }
          dq.publish();
        }
        const kick = eventfd();
        const call = eventfd();
        fds.push(kick, call);
        fe.setupVring(i, mem, layout, kick, call, 0); // NUM, ADDR, BASE, CALL, KICK, then ENABLE 1
        if (i === 1) eventfdWrite(kick);
      }
      await sleep(500);
      expect(linkStat(ns, started.tap, 'rx_packets') - before).toBe(5);
      expect((await be.counters()).counters.txDropped).toBe(0);
    } finally {
      fds.forEach(closeQuiet);
      mem.close();
    }
  }, 60_000);

  it('reads the TAP MTU again when a front-end starts: a jumbo frame goes out after the MTU was raised', async () => {
    ns = NetNs.create('mtu');
    const started = await startBackend(ns, `ip=${HOST},mask=255.255.255.0,socket=${sock},num_queues=2`);
    be = started.be;
    ns.ip('link', 'set', started.tap, 'mtu', '9000');
    dev = await VuDevice.connect({ socket: sock, features: bits(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF), protocolFeatures: PROTOCOL, connectTimeoutMs: 10_000 });
    dev.start(2, 256, 1 << 20);
    const f = new Uint8Array(HDR + 3000);
    f.fill(0xff, HDR, HDR + 6);
    f.set([0x02, 0, 0, 0, 0, 0x42], HDR + 6);
    f[HDR + 12] = 0x88; // local experimental ethertype: the host stack ignores it
    f[HDR + 13] = 0xb5;
    const tx = dev.queues[1];
    const a = dev.buffer(f.length);
    dev.mem!.write(a, f);
    const before = linkStat(ns, started.tap, 'rx_packets');
    tx.dq.add([{ addr: a, len: f.length }], [], 1);
    tx.kick();
    expect(dev.waitUsed(tx, 10_000).map((u) => u.token)).toEqual([1]);
    await sleep(100);
    expect(linkStat(ns, started.tap, 'rx_packets') - before).toBe(1);
    expect((await be.counters()).counters.txOversized).toBe(0);
  }, 60_000);
});
