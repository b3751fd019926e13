import { KumoError, SetupError } from '../../protocol/errors.js';

/** A FUSE operation failed with an errno that goes back to the guest in the reply header. */
export class FsError extends KumoError {
  constructor(
    readonly errno: number,
    message: string,
    context: Record<string, unknown> = {},
  ) {
    super(message, { errno, ...context });
  }
}

/** Bad command line or configuration of kumo-virtiofsd. */
export class FsConfigError extends SetupError {}
/** A command line that does not parse: reported with the usage text (other start-up failures are not). */
export class FsUsageError extends FsConfigError {}

export const E = {
  EPERM: 1, ENOENT: 2, EINTR: 4, EIO: 5, ENXIO: 6, EBADF: 9, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EEXIST: 17, EXDEV: 18, ENODEV: 19, ENOTDIR: 20,
  EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ETXTBSY: 26, EFBIG: 27, ENOSPC: 28, EROFS: 30, ERANGE: 34, EDEADLK: 35, ENOLCK: 37, ENOSYS: 38,
  ENOTEMPTY: 39, ELOOP: 40, ENODATA: 61, EPROTO: 71, EOVERFLOW: 75, EOPNOTSUPP: 95, ENOTCONN: 107, ETIMEDOUT: 110, EHOSTDOWN: 112, ESTALE: 116,
} as const;
