import { availableParallelism } from 'node:os';

const CPUS = availableParallelism();

/**
 * Spreads buffered copies (page cache <-> guest memory) over the host's CPUs: a request thread that
 * has `share` CPUs to itself keeps one copy in every `share` and hands the others to io-wq workers
 * (IOSQE_ASYNC), so that `share` CPUs copy at once. With 2 CPUs and one request thread that is every
 * other copy; with 16 it is 15 of 16. A thread with a CPU or less to itself keeps every copy.
 */
export class CopySpread {
  private turn = 0;

  constructor(private readonly cpus: number = CPUS) {}

  /** CPUs per request thread when `threads` request threads share the host. */
  share(threads: number): number {
    return Math.floor(this.cpus / Math.max(1, threads));
  }

  /** Whether the next copy goes to io-wq, `threads` request threads sharing the CPUs. */
  next(threads: number): boolean {
    const share = this.share(threads);
    if (share < 2) return false;
    this.turn = this.turn + 1 >= share ? 0 : this.turn + 1;
    return this.turn !== 0;
  }
}
