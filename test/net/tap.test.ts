import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NetNs, netnsUnavailable } from './netns.js';
import { IFF_MULTI_QUEUE, IFF_VNET_HDR, tunFeatures, validTapName } from '../../protocol/sys/tap.js';

const why = netnsUnavailable();
if (why) console.warn(`skipping TAP tests: ${why}`);
const probe = fileURLToPath(new URL('./tap-probe.ts', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

async function runProbe(ns: NetNs, args: string[]) {
  const child = ns.spawn(tsx, [probe, ...args]);
  const rl = createInterface({ input: child.stdout! });
  const line = await new Promise<string>((resolve, reject) => {
    rl.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`probe exited ${code}`)));
  });
  return { info: JSON.parse(line) as Record<string, unknown>, done: () => new Promise<void>((r) => { child.once('exit', () => r()); child.stdin!.end(); }) };
}

describe.skipIf(why !== null)('TAP bindings (inside a private netns)', () => {
  let ns: NetNs;
  beforeAll(() => {
    ns = NetNs.create('tap');
  });
  afterAll(() => ns?.delete());

  it('the kernel supports multi-queue TAPs with vnet headers', () => {
    const f = tunFeatures();
    expect(f & IFF_VNET_HDR).toBeTruthy();
    expect(f & IFF_MULTI_QUEUE).toBeTruthy();
  });

  it('creates a 2-queue TAP and sets address, mask, MAC, MTU and link up', async () => {
    const p = await runProbe(ns, ['kt%d', '2', '10.11.12.1', '255.255.255.0', '02:00:00:aa:bb:cc', '1400']);
    try {
      expect(p.info).toMatchObject({ name: 'kt0', fds: 2, mac: '02:00:00:aa:bb:cc', mtu: 1400 });
      const addr = ns.ip('-4', '-o', 'addr', 'show', 'dev', 'kt0');
      expect(addr).toContain('10.11.12.1/24');
      const link = ns.ip('-o', 'link', 'show', 'dev', 'kt0');
      expect(link).toMatch(/[<,]UP[,>]/);
      expect(link).toContain('mtu 1400');
    } finally {
      await p.done();
    }
    // Not persistent: closing the queue fds removed it.
    expect(ns.ip('-o', 'link', 'show')).not.toContain('kt0');
  });

  it('attaches to an existing multi-queue TAP named by tap=', async () => {
    ns.ip('tuntap', 'add', 'dev', 'ktpre', 'mode', 'tap', 'multi_queue', 'vnet_hdr');
    const p = await runProbe(ns, ['ktpre', '2', '10.11.13.1', '255.255.0.0']);
    try {
      expect(p.info).toMatchObject({ name: 'ktpre', fds: 2 });
      expect(ns.ip('-4', '-o', 'addr', 'show', 'dev', 'ktpre')).toContain('10.11.13.1/16');
    } finally {
      await p.done();
    }
    const one = await runProbe(ns, ['ktpre', '1']); // one queue of a multi-queue TAP
    try {
      expect(one.info).toMatchObject({ name: 'ktpre', fds: 1 });
    } finally {
      await one.done();
    }
    ns.ip('link', 'del', 'ktpre');
  });

  it('uses an existing single-queue TAP for one queue, as Cloud Hypervisor does, and explains why not for two', async () => {
    ns.ip('tuntap', 'add', 'dev', 'ktsingle', 'mode', 'tap');
    const p = await runProbe(ns, ['ktsingle', '1']);
    try {
      expect(p.info).toMatchObject({ name: 'ktsingle', fds: 1 });
    } finally {
      await p.done();
    }
    const q = await runProbe(ns, ['ktsingle', '2']);
    expect(String(q.info.error)).toContain('cannot attach TAP ktsingle');
    expect(JSON.stringify(q.info.context)).toContain('single-queue TAP asked for several queues');
    ns.ip('link', 'del', 'ktsingle');
  });

  it('refuses a TAP another process holds instead of sharing its frames with it', async () => {
    const one = await runProbe(ns, ['ktbusy', '1']);
    try {
      const again = await runProbe(ns, ['ktbusy', '1']);
      expect(String(again.info.error)).toContain('cannot attach TAP ktbusy');
      expect(JSON.stringify(again.info.context)).toContain('in use by another process');
    } finally {
      await one.done();
    }
    const two = await runProbe(ns, ['ktmq', '2']);
    try {
      const more = await runProbe(ns, ['ktmq', '2']);
      expect(String(more.info.error)).toContain('TAP ktmq is in use by another process (it has 4 queues, 2 of them ours)');
    } finally {
      await two.done();
    }
  });

  it('refuses malformed interface names', () => {
    expect(validTapName('a/b')).toBe(false);
    expect(validTapName('x'.repeat(16))).toBe(false);
    expect(validTapName('tap0')).toBe(true);
  });
});
