import { KumoError } from '../../protocol/errors.js';
import { parseOptions, describeSyntax, toOptionString, str, int, bool, type ParsedOptions } from '../../protocol/config/options.js';

export class BlockBackendConfigError extends KumoError {}

const SCHEMA = {
  path: str({ required: true, hint: '<image_path>' }),
  socket: str({ required: true, hint: '<socket_path>' }),
  num_queues: int({ default: 1, min: 1, max: 256 }),
  queue_size: int({ default: 1024, min: 1, max: 32768 }),
  readonly: bool(false),
  direct: bool(false),
  poll_queue: bool(true),
  /** Ours, as qemu-storage-daemon's locking=: off serves an image another process holds (a migration's two ends). */
  locking: bool(true),
};

type Values = ParsedOptions<typeof SCHEMA>;

/**
 * `--block-backend` of a vhost-user-blk backend; same keys and defaults as Cloud Hypervisor's
 * vhost_user_block: path, socket (required), num_queues=1, queue_size=1024, readonly=off,
 * direct=off, poll_queue=on; plus locking=on (off: no image lock, as qemu-storage-daemon's locking=off).
 */
export class BlockBackendConfig {
  static readonly SYNTAX =
    'vhost-user-block backend parameters "path=<image_path>,socket=<socket_path>,num_queues=<number_of_queues>,' +
    'queue_size=<size_of_each_queue>,readonly=true|false,direct=true|false,poll_queue=true|false,locking=true|false"';

  readonly path: string;
  readonly socket: string;
  readonly numQueues: number;
  readonly queueSize: number;
  readonly readonly: boolean;
  readonly direct: boolean;
  readonly pollQueue: boolean;
  readonly locking: boolean;

  constructor(v: Values) {
    this.path = v.path;
    this.socket = v.socket;
    this.numQueues = v.num_queues;
    this.queueSize = v.queue_size;
    this.readonly = v.readonly;
    this.direct = v.direct;
    this.pollQueue = v.poll_queue;
    this.locking = v.locking;
  }

  /** Parses and validates "path=..,socket=..,..."; throws OptionsError / BlockBackendConfigError. */
  static parse(s: string): BlockBackendConfig {
    const c = new BlockBackendConfig(parseOptions(s, SCHEMA, { syntax: describeSyntax(SCHEMA), what: '--block-backend' }));
    c.validate();
    return c;
  }

  validate(): void {
    const q = this.queueSize;
    if ((q & (q - 1)) !== 0) {
      throw new BlockBackendConfigError(`--block-backend: queue_size must be a power of two, got ${q}`, { queue_size: q });
    }
    if (this.path === '' || this.socket === '') {
      throw new BlockBackendConfigError('--block-backend: path and socket must not be empty', { path: this.path, socket: this.socket });
    }
  }

  toJSON(): Record<string, unknown> {
    return {
      path: this.path,
      socket: this.socket,
      num_queues: this.numQueues,
      queue_size: this.queueSize,
      readonly: this.readonly,
      direct: this.direct,
      poll_queue: this.pollQueue,
      locking: this.locking,
    };
  }

  /** The option string that parses back to this config. */
  toString(): string {
    return toOptionString(SCHEMA, {
      path: this.path, socket: this.socket, num_queues: this.numQueues, queue_size: this.queueSize,
      readonly: this.readonly, direct: this.direct, poll_queue: this.pollQueue, locking: this.locking,
    }, { includeDefaults: true });
  }
}
