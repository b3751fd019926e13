import { logger } from '../../protocol/log.js';
import { E, FsError } from './errors.js';

const log = logger('virtiofsd');

/**
 * How many fds the guest may make the daemon hold open: inodes kept as O_PATH fds, open files and directories, and
 * POSIX-lock fds. A guest that reaches the limit gets ENFILE, as from virtiofsd, while the fds the daemon needs
 * itself (memory regions, eventfds, io_uring) stay available: without this, a guest that opened files until the
 * process ran out would make the next memory table the front-end sends impossible to receive.
 */
export class GuestFds {
  private used = 0;
  private warned = false;

  constructor(readonly limit: number) {}

  get count(): number {
    return this.used;
  }

  fits(n: number): boolean {
    if (this.used + n <= this.limit) return true;
    if (!this.warned) {
      this.warned = true;
      log.error({ limit: this.limit }, 'the guest holds as many fds as it may (ENFILE from now on); --rlimit-nofile raises the limit');
    }
    return false;
  }

  /** Throws ENFILE unless n more fit (before the call that would open them). */
  need(n: number): void {
    if (!this.fits(n)) throw new FsError(E.ENFILE, 'guest fd limit reached', { limit: this.limit });
  }

  took(n = 1): void {
    this.used += n;
  }

  gave(n = 1): void {
    this.used -= n;
  }
}
