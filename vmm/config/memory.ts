import { totalmem } from 'node:os';
import { bool, describeSyntax, formatSize, parseOptions, size } from '../../protocol/config/options.js';
import { MAX_GUEST_ADDR, MEM_32BIT_GAP_START, RAM_64BIT_START, MiB } from '../memory/layout.js';
import { ConfigError } from './errors.js';
import { defaultHugepageSize } from '../memory/hugepages.js';

const schema = {
  size: size({ default: 512 * MiB }),
  shared: bool(false),
  hugepages: bool(false),
  hugepage_size: size(),
};

/** Smallest guest kumo boots: low boot structures, a kernel at 1 MiB and room to decompress. */
export const MIN_MEMORY = 64 * MiB;
/** RAM must end below 2^MAX_PHYS_BITS (the hole below 4 GiB moves the rest up by 1 GiB). */
export const MAX_MEMORY = MAX_GUEST_ADDR - (RAM_64BIT_START - MEM_32BIT_GAP_START);
const HUGEPAGE_SIZES = [2 * MiB, 1024 * MiB];

export interface MemoryJson {
  size: number;
  shared: boolean;
  hugepages: boolean;
  hugepage_size: number | null;
}

/** --memory size=,shared=,hugepages=,hugepage_size= (Cloud Hypervisor syntax). */
export class MemoryConfig {
  static readonly SYNTAX = `--memory ${describeSyntax(schema)}`;

  constructor(
    readonly size = 512 * MiB,
    readonly shared = false,
    readonly hugepages = false,
    readonly hugepageSize: number | null = null,
  ) {}

  static parse(s: string): MemoryConfig {
    const o = parseOptions(s, schema, { what: '--memory', syntax: MemoryConfig.SYNTAX });
    const c = new MemoryConfig(o.size, o.shared, o.hugepages, o.hugepage_size ?? null);
    c.validate();
    return c;
  }

  /** Checks alone (no host probing beyond total RAM): conflicting keys, sizes, alignment. */
  validate(hostMemory = totalmem()): void {
    const sz = formatSize(this.size);
    if (this.size < MIN_MEMORY) throw new ConfigError(`--memory: size=${sz} is too small (minimum ${formatSize(MIN_MEMORY)})`, { size: this.size });
    if (this.size > MAX_MEMORY) throw new ConfigError(`--memory: size=${sz} exceeds the guest physical address space`, { size: this.size });
    if (this.size > hostMemory) {
      throw new ConfigError(`--memory: size=${sz} is larger than host memory (${formatSize(hostMemory)})`, { size: this.size, hostMemory });
    }
    if (this.size % 4096 !== 0) throw new ConfigError(`--memory: size=${this.size} is not a multiple of 4 KiB`, { size: this.size });
    if (this.hugepageSize !== null && !this.hugepages) {
      throw new ConfigError('--memory: hugepage_size requires hugepages=on', { hugepage_size: this.hugepageSize });
    }
    if (this.hugepages) {
      const hp = this.effectiveHugepageSize();
      if (!HUGEPAGE_SIZES.includes(hp)) {
        throw new ConfigError(`--memory: hugepage_size=${formatSize(hp)} is not supported (2M or 1G)`, { hugepage_size: hp });
      }
      if (this.size % hp !== 0) {
        throw new ConfigError(`--memory: size=${sz} is not a multiple of hugepage_size=${formatSize(hp)}`, { size: this.size, hugepage_size: hp });
      }
    }
  }

  /** hugepage_size, or the host's default huge page size when none is given (as Cloud Hypervisor). */
  effectiveHugepageSize(): number {
    return this.hugepageSize ?? defaultHugepageSize();
  }

  toJSON(): MemoryJson {
    return { size: this.size, shared: this.shared, hugepages: this.hugepages, hugepage_size: this.hugepageSize };
  }

  static fromJSON(j: Partial<MemoryJson>): MemoryConfig {
    const c = new MemoryConfig(j.size ?? 512 * MiB, j.shared ?? false, j.hugepages ?? false, j.hugepage_size ?? null);
    c.validate();
    return c;
  }
}
