// A back-end answers SET_MEM_TABLE only once it has mapped and indexed the guest's RAM: DPDK's vhost library (testpmd
// --vdev net_vhost0) took 35.6 s for a 14 GiB guest on 4 KiB pages, 8.8 s for 4.5 GiB. The front-end gave every
// request the same 30 s, so kumo's NIC on DPDK failed to start ("timed out waiting for the peer", SET_MEM_TABLE) where
// QEMU and Cloud Hypervisor wait. The wait for the memory table now grows with the memory's size.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../protocol/memory/index.js';
import { VhostUserFrontend } from '../../protocol/vhost-user/index.js';

const GiB = 2 ** 30;
/** A back-end in a child process: reads one message, then acks it (u64 0) after DELAY ms. */
const SLOW_BACKEND = `
const net = require('net');
const [sock, delay] = [process.argv[1], Number(process.argv[2])];
net.createServer((c) => {
  let buf = Buffer.alloc(0);
  c.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (buf.length < 12 || buf.length < 12 + buf.readUInt32LE(8)) return;
    const req = buf.readUInt32LE(0);
    setTimeout(() => {
      const r = Buffer.alloc(20);
      r.writeUInt32LE(req, 0); r.writeUInt32LE(0x5, 4); r.writeUInt32LE(8, 8); // version 1 | REPLY, u64 0
      c.write(r);
    }, delay);
  });
}).listen(sock, () => console.log('ready'));
`;

describe('vhost-user front-end: the memory table reply', () => {
  it('is waited for longer than other replies, in proportion to the memory', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-memtable-'));
    const sock = path.join(dir, 'be.sock');
    const be = spawn(process.execPath, ['-e', SLOW_BACKEND, sock, '1500'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const mem = GuestMemory.anonymous([{ guestAddr: 0, size: GiB }]);
    try {
      await new Promise<void>((r) => be.stdout!.once('data', () => r()));
      const fe = await VhostUserFrontend.connect(sock, { replyTimeoutMs: 300, ackEveryRequest: true });
      try {
        fe.protocolFeatures = 1n << 3n; // REPLY_ACK
        const t0 = Date.now();
        fe.setMemTable(mem); // a 1.5 s answer: past replyTimeoutMs, inside the 1 GiB allowance
        expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
      } finally {
        fe.close();
      }
    } finally {
      mem.close();
      be.kill('SIGKILL');
      await sleep(50);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
