import { readFileSync, existsSync } from 'node:fs';
import { GuestRamError } from './errors.js';

export const MFD_HUGE_SHIFT = 26;

function sysfsDir(pageSize: number): string {
  return `/sys/kernel/mm/hugepages/hugepages-${pageSize / 1024}kB`;
}

/** Host default huge page size (Hugepagesize in /proc/meminfo), 2 MiB if unknown. */
export function defaultHugepageSize(): number {
  try {
    const m = /Hugepagesize:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // fall through
  }
  return 2 * 1024 * 1024;
}

/** Throws a clear error unless the host has `bytes` of free huge pages of `pageSize`. */
export function checkHugepagesAvailable(bytes: number, pageSize: number): void {
  const dir = sysfsDir(pageSize);
  if (!existsSync(dir)) {
    throw new GuestRamError(`host does not support ${pageSize / 1024} KiB huge pages`, { dir });
  }
  const free = Number(readFileSync(`${dir}/free_hugepages`, 'utf8').trim());
  // Free pages another mapping (a running VM) has reserved are not free for us.
  const reserved = Number(readFileSync(`${dir}/resv_hugepages`, 'utf8').trim()) || 0;
  const available = Math.max(0, free - reserved);
  const need = Math.ceil(bytes / pageSize);
  if (available < need) {
    throw new GuestRamError(
      `not enough free huge pages: need ${need} of ${pageSize / 1024} KiB, host has ${available} available ` +
        `(${free} free, ${reserved} of them reserved; see ${dir}/nr_hugepages)`,
      { need, free, reserved, pageSize },
    );
  }
}

/** memfd_create flags selecting a huge page size. */
export function hugetlbFlags(pageSize: number): number {
  return (Math.log2(pageSize) << MFD_HUGE_SHIFT) >>> 0;
}
