/**
 * Deadlock detection for blocking POSIX locks (SETLKW). Each guest lock owner holds its locks on an OFD lock fd of
 * its own, and the kernel detects no deadlock between OFD locks, so two guest processes locking two ranges in
 * opposite orders waited for each other for good (stress-ng's lockf stressor gets there in seconds). A local file
 * system answers the request that closes the cycle EDEADLK; so does this daemon, for cycles among its own owners (a
 * host process's locks are invisible here, as they are to another machine's NFS client).
 */

/** One lock range, `end` inclusive (2^63 - 1: to the end of the file). */
export interface LockRange {
  write: boolean;
  start: bigint;
  end: bigint;
}

/** A parked SETLKW: what `owner` waits for on `inode` (compared by identity). */
export interface LockWant extends LockRange {
  inode: object;
  owner: bigint;
}

const EOF_END = 0x7fff_ffff_ffff_ffffn;

/**
 * The OFD locks an open file description holds, from its /proc/self/fdinfo text:
 * `lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:4244544 10 14` (start and end inclusive, or EOF).
 */
export function parseFdinfoLocks(text: string): LockRange[] {
  const out: LockRange[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('lock:')) continue;
    const f = line.slice(5).trim().split(/\s+/);
    // id: OFDLCK ADVISORY WRITE pid dev:ino start end
    if (f.length < 8 || f[1] !== 'OFDLCK') continue;
    const start = /^\d+$/.test(f[6]) ? BigInt(f[6]) : null;
    const end = f[7] === 'EOF' ? EOF_END : /^\d+$/.test(f[7]) ? BigInt(f[7]) : null;
    if (start === null || end === null) continue;
    out.push({ write: f[3] === 'WRITE', start, end });
  }
  return out;
}

export function conflicts(a: LockRange, b: LockRange): boolean {
  return (a.write || b.write) && a.start <= b.end && b.start <= a.end;
}

/**
 * Whether `want` would close a cycle: the owners it waits for (`blockers`) wait, through their own parked
 * requests (`parked`), for ... for `want.owner`.
 */
export function closesCycle(want: LockWant, blockers: (w: LockWant) => bigint[], parked: (owner: bigint) => LockWant[]): boolean {
  const seen = new Set<bigint>();
  const stack = blockers(want);
  while (stack.length > 0) {
    const b = stack.pop() as bigint;
    if (b === want.owner) return true;
    if (seen.has(b)) continue;
    seen.add(b);
    for (const w of parked(b)) stack.push(...blockers(w));
  }
  return false;
}
