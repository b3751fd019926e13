import { GuestMemory, type MemoryRegionSpec } from '../../protocol/memory/index.js';
import { memfdCreate, ftruncate, sealAgainstShrink, F_SEAL_GROW, F_SEAL_SEAL, MFD_ALLOW_SEALING, MFD_CLOEXEC, MFD_HUGETLB } from '../../protocol/sys/mem.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { logger } from '../../protocol/log.js';
import { ramRanges, type RamRange } from './layout.js';
import { checkHugepagesAvailable, hugetlbFlags } from './hugepages.js';

const log = logger('guest-ram');

export interface GuestRamOptions {
  size: number;
  hugepages?: boolean;
  /** Bytes; the host default when omitted. */
  hugepageSize?: number;
}

/** What a worker thread needs to view the same RAM (structured-clone safe). */
export interface RamViewDescriptor {
  regions: { guestAddr: number; size: number; ptr: bigint }[];
}

/** vhost-user memory region (VHOST_USER_SET_MEM_TABLE / ADD_MEM_REG entry) for one RAM range. */
export interface SharedRegion extends MemoryRegionSpec {}

/**
 * Guest RAM: one memfd per range of the CH layout, mapped MAP_SHARED so the same fds can be handed
 * to vhost-user backends. Optional MFD_HUGETLB.
 */
export class GuestRam {
  private constructor(
    readonly memory: GuestMemory,
    readonly size: number,
    readonly ranges: readonly RamRange[],
  ) {}

  static create(opts: GuestRamOptions): GuestRam {
    const ranges = ramRanges(opts.size);
    let memory: GuestMemory;
    if (!opts.hugepages) {
      memory = GuestMemory.anonymous(ranges);
    } else {
      const pageSize = opts.hugepageSize ?? 2 * 1024 * 1024;
      checkHugepagesAvailable(opts.size, pageSize);
      const flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | hugetlbFlags(pageSize);
      // GuestMemory.anonymous has no memfd flags: map hugetlb memfds ourselves. Their front-end
      // ("user") addresses are the guest addresses — any non-overlapping space works for vhost-user.
      const specs: MemoryRegionSpec[] = [];
      try {
        for (const r of ranges) {
          const fd = memfdCreate(`kumo-ram-${r.guestAddr.toString(16)}`, flags);
          specs.push({ guestAddr: r.guestAddr, size: r.size, fd, fdOffset: 0, userAddr: r.guestAddr });
          ftruncate(fd, r.size);
          sealAgainstShrink(fd, F_SEAL_GROW | F_SEAL_SEAL);
        }
      } catch (e) {
        for (const s of specs) closeQuiet(s.fd);
        throw e;
      }
      memory = GuestMemory.fromRegions(specs);
    }
    log.debug({ ranges, hugepages: !!opts.hugepages }, 'guest RAM mapped');
    return new GuestRam(memory, opts.size, ranges);
  }

  /** Regions with fds and our mapping addresses, as vhost-user SET_MEM_TABLE wants them. */
  sharedRegions(): SharedRegion[] {
    return this.memory.regions.map((r) => ({
      guestAddr: r.guestAddr,
      size: r.size,
      fd: r.fd,
      fdOffset: r.fdOffset,
      userAddr: r.userAddr,
    }));
  }

  describe(): RamViewDescriptor {
    return { regions: this.memory.regions.map((r) => ({ guestAddr: r.guestAddr, size: r.size, ptr: r.ptr })) };
  }

  close(): void {
    this.memory.close();
  }
}
