// A burst of requests that need no reply (SET_VRING_* without REPLY_ACK) fills the socket when the back-end's main
// thread is busy for a while. The front-end dropped the connection after 1 s of a full socket (the back-end's limit
// for a front-end that stopped reading), so a loaded host could lose a device in the middle of its setup. It now waits
// as long as it would for a reply.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { socketPair } from '../../protocol/sys/socket.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { VhostUserDisconnectedError, VhostUserFrontend } from '../../protocol/vhost-user/index.js';

/** A back-end stand-in on `fd` that reads nothing for `pauseS` seconds, then reads everything until the socket closes. */
function slowReader(fd: number, pauseS: number) {
  const child = spawn('sh', ['-c', `sleep ${pauseS}; exec cat > /dev/null`], { stdio: [fd, 'ignore', 'inherit'] });
  closeQuiet(fd);
  return child;
}

/** Sends SET_VRING_NUM until the socket has been full once (a send took over 100 ms), then 2,000 more; the longest send. */
function burst(fe: VhostUserFrontend): { stalledMs: number } {
  let stalledMs = 0;
  const send = () => {
    const t = Date.now();
    fe.setVringNum(0, 256);
    stalledMs = Math.max(stalledMs, Date.now() - t);
  };
  for (let i = 0; stalledMs <= 100; i++) {
    if (i > 1_000_000) throw new Error('the socket never filled');
    send();
  }
  for (let i = 0; i < 2000; i++) send();
  return { stalledMs };
}

describe('vhost-user front-end: a back-end that reads nothing for a while', () => {
  it('is waited for as long as a reply would be, not dropped after 1 s', async () => {
    const [a, b] = socketPair();
    const reader = slowReader(b, 2);
    const fe = new VhostUserFrontend(a, { replyTimeoutMs: 10_000 });
    try {
      const { stalledMs } = burst(fe);
      expect(stalledMs).toBeGreaterThan(1000);
    } finally {
      fe.close();
    }
    await once(reader, 'exit');
  }, 30_000);

  it('is dropped once its silence outlasts the reply timeout', async () => {
    const [a, b] = socketPair();
    const reader = slowReader(b, 3);
    const fe = new VhostUserFrontend(a, { replyTimeoutMs: 500 });
    try {
      expect(() => burst(fe)).toThrow(VhostUserDisconnectedError);
    } finally {
      fe.close();
    }
    await once(reader, 'exit');
  }, 30_000);
});
