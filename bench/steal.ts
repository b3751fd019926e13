import { readFileSync } from 'node:fs';

/** CPU time the hypervisor gave to other tenants (the `steal` column of /proc/stat), in ticks, with the total. */
interface CpuTicks {
  steal: number;
  total: number;
}

function cpuTicks(): CpuTicks | null {
  try {
    const line = /^cpu\s+(.*)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1];
    if (line === undefined) return null;
    // user nice system idle iowait irq softirq steal (guest and guest_nice are already in user and nice)
    const f = line.trim().split(/\s+/).slice(0, 8).map(Number);
    if (f.length < 8 || f.some((x) => !Number.isFinite(x))) return null;
    return { steal: f[7], total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

/**
 * Measures how much CPU the host took away while a benchmark ran: on an overcommitted VM the figures
 * swing with it (the same blk case ran at 103k IOPS with 41% stolen and 277k with 6%), so every module's
 * tables are followed by this share.
 */
export class StealMeter {
  private readonly start = cpuTicks();

  /** Percent of all CPU time since construction that was stolen, or null where /proc/stat cannot tell. */
  percent(): number | null {
    const end = cpuTicks();
    if (this.start === null || end === null) return null;
    const total = end.total - this.start.total;
    return total > 0 ? ((end.steal - this.start.steal) / total) * 100 : null;
  }

  /** "steal: 12.0% of CPU time ..." or null where /proc/stat cannot tell. */
  line(what: string): string | null {
    const pct = this.percent();
    if (pct === null) return null;
    const warn = pct >= STEAL_NOISY ? ' (the host was busy: these figures are noisy, compare them within this run only)' : '';
    return `steal: ${pct.toFixed(1)}% of CPU time went to the hypervisor's other tenants during ${what}${warn}`;
  }
}

/** Above this share of stolen CPU a run's figures are visibly off. */
export const STEAL_NOISY = 5;

export const fmtSteal = (pct: number | null | undefined): string => (pct === null || pct === undefined ? '-' : pct.toFixed(0));
