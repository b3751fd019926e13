import { opName, OutHeader, OUT_HEADER_SIZE, type InHeader } from '../../protocol/fuse/index.js';
import { logger, WarnLimiter } from '../../protocol/log.js';
import { E } from './errors.js';
import type { FuseIo } from './fuse-io.js';

const log = logger('virtiofsd');
/** Warnings about what a guest sent: rate-limited (see WarnLimiter). */
const guestWarn = new WarnLimiter(log);

export interface ServerStats {
  requests: number;
  errors: number;
  dropped: number;
  /** Requests that hit an unexpected exception (a bug, answered with EIO). */
  internal: number;
}

/**
 * The replies of the generic request path: the out header, with a body encoded at outBuf[OUT_HEADER_SIZE..), and
 * the requests dropped or refused for what the guest sent (counted in `stats`, warned about at a limited rate).
 */
export class Replies {
  constructor(
    /** Reply bytes: the header at 0, the body after it. */
    readonly outBuf: Buffer,
    private readonly stats: ServerStats,
  ) {}

  drop(why: string, len: number): number {
    this.stats.dropped++;
    guestWarn.warn({ len }, `dropping request: ${why}`);
    return 0;
  }

  fail(io: FuseIo, unique: bigint, errno: number, why: string, h: InHeader): number {
    this.stats.errors++;
    guestWarn.warn({ op: opName(h.opcode), len: h.len, nodeid: h.nodeid }, why);
    return this.reply(io, unique, -errno);
  }

  /** Writes header (+ body already encoded at outBuf[16..16+bodyLen)). */
  reply(io: FuseIo, unique: bigint, error: number, bodyLen = 0): number {
    const len = OUT_HEADER_SIZE + (error === 0 ? bodyLen : 0);
    if (len > io.outLength) {
      // Not even an error header fits (a FORGET-like chain with a damaged header): nothing can be said.
      if (io.outLength < OUT_HEADER_SIZE) return this.drop('no room for a reply', io.outLength);
      guestWarn.warn({ need: len, have: io.outLength }, 'reply does not fit the writable buffers');
      return this.reply(io, unique, -E.EINVAL);
    }
    OutHeader.encode({ len, error, unique }, this.outBuf, 0);
    io.writeOut(0, this.outBuf.subarray(0, len));
    return len;
  }

  replyStruct<V>(io: FuseIo, unique: bigint, s: { encode(v: V, b: Uint8Array, o: number): number; size: number }, v: V): number {
    s.encode(v, this.outBuf, OUT_HEADER_SIZE);
    return this.reply(io, unique, 0, s.size);
  }

  replyBytes(io: FuseIo, unique: bigint, b: Uint8Array): number {
    this.outBuf.set(b, OUT_HEADER_SIZE);
    return this.reply(io, unique, 0, b.length);
  }
}
