// A back-end may answer long after the front-end gave up waiting (GET_VRING_BASE waits for I/O in flight, which a
// frozen or throttled image holds up). The late reply came first on the socket, so every later request read the one
// before it ("reply to the wrong request") and the device could not be started again until the VM restarted.
import { describe, expect, it } from 'vitest';
import { socketPair } from '../../protocol/sys/socket.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { writeSync } from 'node:fs';
import { encodeMessage, Request, reply, VhostUserChannel, VhostUserFrontend, VhostUserTimeoutError } from '../../protocol/vhost-user/index.js';

describe('vhost-user front-end: a reply that comes after its wait timed out', () => {
  it('is dropped, and the next requests read their own replies', () => {
    const [a, b] = socketPair();
    const fe = new VhostUserFrontend(a, { replyTimeoutMs: 150 });
    const be = new VhostUserChannel(b);
    try {
      expect(() => fe.getFeatures()).toThrow(VhostUserTimeoutError);
      expect(() => fe.getQueueNum()).toThrow(VhostUserTimeoutError);
      // Both replies come late, then the one for the next request.
      for (const r of [Request.GET_FEATURES, Request.GET_QUEUE_NUM]) {
        const m = be.recvSync(1000);
        expect(m?.header.request).toBe(r);
      }
      be.send(reply(Request.GET_FEATURES, { kind: 'u64', value: 1n }));
      be.send(reply(Request.GET_QUEUE_NUM, { kind: 'u64', value: 2n }));
      be.send(reply(Request.GET_MAX_MEM_SLOTS, { kind: 'u64', value: 509n }));
      be.send(reply(Request.GET_QUEUE_NUM, { kind: 'u64', value: 4n }));
      expect(fe.getMaxMemSlots()).toBe(509);
      expect(fe.getQueueNum()).toBe(4);
    } finally {
      fe.close();
      be.close();
    }
  });

  // A reply cut short (header now, payload too late) leaves no message boundary to read on from.
  it('ends the connection when a reply stops in the middle', () => {
    const [a, b] = socketPair();
    const fe = new VhostUserFrontend(a, { replyTimeoutMs: 150 });
    const be = new VhostUserChannel(b);
    try {
      const whole = encodeMessage(reply(Request.GET_FEATURES, { kind: 'u64', value: 1n }));
      writeSync(b, whole.subarray(0, 12)); // the header only
      expect(() => fe.getFeatures()).toThrow(/stopped in the middle of a message/);
      // Its fd number is free for the next fd this process opens: the connection must not reach whatever gets it.
      const [c, d] = socketPair();
      try {
        expect(c === a || d === a).toBe(true);
        expect(() => fe.getQueueNum()).toThrow(/the connection to the back-end is closed/);
      } finally {
        closeQuiet(c);
        closeQuiet(d);
      }
    } finally {
      fe.close();
      be.close();
    }
  });
});
