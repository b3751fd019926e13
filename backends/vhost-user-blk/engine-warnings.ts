import type { ChainError } from '../../protocol/virtqueue/index.js';
import { WarnLimiter, type Logger } from '../../protocol/log.js';
import { errnoName } from '../../protocol/sys/libc.js';
import { KIND_NAMES } from './request-slots.js';

/** How often a failing image is said at most (see host). */
const HOST_WARN_MS = 5000;

/** A queue engine's warnings, rate-limited (see WarnLimiter). */
export class EngineWarnings {
  /** Warnings about what the guest sent. */
  private readonly guest: WarnLimiter | null;
  /**
   * I/O on the image that failed (ENOSPC on a sparse image, EIO from a failing disk): the guest gets IOERR for each
   * request, and the operator a warning now and then (with the count held back) rather than none or one per request.
   */
  private readonly host: WarnLimiter | null;

  constructor(log: Logger | undefined) {
    this.guest = log ? new WarnLimiter(log) : null;
    this.host = log ? new WarnLimiter(log, 1, HOST_WARN_MS) : null;
  }

  malformedChain(e: ChainError): void {
    this.guest?.warn({ err: e.message, ...e.context }, 'dropping malformed descriptor chain');
  }

  noStatusByte(head: number): void {
    this.guest?.warn({ head }, 'request without a status byte: dropped');
  }

  /** An op of a request of `kind` failed with `res` (-errno, or a short transfer's byte count). */
  ioFailed(kind: number, res: number): void {
    this.host?.warn({ err: res < 0 ? errnoName(-res) : 'short transfer', op: KIND_NAMES[kind] ?? kind }, 'I/O on the image failed: the guest gets IOERR');
  }
}
