import { readFileSync } from 'node:fs';

/** CPU time the hypervisor gave to other tenants (the `steal` column of /proc/stat) and time spent running, in ticks, with the total. */
interface CpuTicks {
  steal: number;
  /** user + nice + system + irq + softirq: every CPU's time not idle, waiting or stolen. */
  busy: number;
  total: number;
}

function cpuTicks(): CpuTicks | null {
  try {
    const line = /^cpu\s+(.*)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1];
    if (line === undefined) return null;
    // user nice system idle iowait irq softirq steal (guest and guest_nice are already in user and nice)
    const f = line.trim().split(/\s+/).slice(0, 8).map(Number);
    if (f.length < 8 || f.some((x) => !Number.isFinite(x))) return null;
    return { steal: f[7], busy: f[0] + f[1] + f[2] + f[5] + f[6], total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

/**
 * Measures the host's CPUs while a benchmark ran: how much the hypervisor took away (on an overcommitted VM the
 * figures swing with it: the same blk case ran at 103k IOPS with 41% stolen and 277k with 6%, so every module's
 * tables are followed by this share), and how busy they were (whether a run used the whole host).
 */
export class HostCpuMeter {
  private readonly start = cpuTicks();

  /**
   * Percent of all CPU time since construction that was stolen, and that was spent running anything (100: every
   * CPU busy throughout: the run used the whole host), from one read of /proc/stat; null where it cannot tell.
   */
  shares(): { steal: number | null; busy: number | null } {
    const end = cpuTicks();
    if (this.start === null || end === null || end.total <= this.start.total) return { steal: null, busy: null };
    const total = end.total - this.start.total;
    return { steal: ((end.steal - this.start.steal) / total) * 100, busy: ((end.busy - this.start.busy) / total) * 100 };
  }

  /** The stolen share alone (see shares()). */
  percent(): number | null {
    return this.shares().steal;
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

export const fmtPercent = (pct: number | null | undefined): string => (pct === null || pct === undefined ? '-' : pct.toFixed(0));
