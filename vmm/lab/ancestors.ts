import fs from 'node:fs';

function parentOf(pid: number): number | null {
  try {
    // Field 4 of /proc/PID/stat, after the parenthesised command name (which may hold spaces).
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

/**
 * Calls `onLost` once when any of our nearest `levels` ancestors exits. `npm run` and `npx` do not
 * pass SIGTERM on to the shell they start, so a lab started through them would otherwise outlive a
 * CI job that was cancelled.
 */
export function watchAncestors(levels: number, onLost: () => void, everyMs = 1000): NodeJS.Timeout {
  const chain: number[] = [];
  let pid = process.ppid;
  while (chain.length < levels && pid > 1) {
    chain.push(pid);
    const p = parentOf(pid);
    if (p === null) break;
    pid = p;
  }
  const start = chain.map((p) => parentOf(p));
  const timer = setInterval(() => {
    // Gone, or reparented (its parent died) — either way whoever started us is gone.
    if (chain.some((p, i) => parentOf(p) !== start[i])) {
      clearInterval(timer);
      onLost();
    }
  }, everyMs);
  timer.unref();
  return timer;
}
