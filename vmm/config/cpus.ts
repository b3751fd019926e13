import { describeSyntax, int, parseOptions } from '../../protocol/config/options.js';
import { ConfigError } from './errors.js';

/** Highest vCPU count: xAPIC ids are 8 bits and 0xff is broadcast. */
export const MAX_VCPUS = 254;

const schema = {
  boot: int({ min: 1, max: MAX_VCPUS, default: 1 }),
  max: int({ min: 1, max: MAX_VCPUS }),
};

/**
 * --cpus boot=N,max=M (Cloud Hypervisor syntax; other CH keys are not supported and are refused). There is no CPU
 * hot-plug: max is accepted and kept (API replies, launchers that always pass it) but only boot vCPUs exist.
 */
export class CpusConfig {
  static readonly SYNTAX = `--cpus ${describeSyntax(schema)}`;

  constructor(
    readonly boot = 1,
    readonly max = boot,
  ) {}

  static parse(s: string): CpusConfig {
    const o = parseOptions(s, schema, { what: '--cpus', syntax: CpusConfig.SYNTAX });
    const c = new CpusConfig(o.boot, o.max ?? o.boot);
    c.validate();
    return c;
  }

  validate(): void {
    if (!Number.isInteger(this.boot) || this.boot < 1 || this.boot > MAX_VCPUS) {
      throw new ConfigError(`--cpus: boot must be between 1 and ${MAX_VCPUS}`, { boot: this.boot });
    }
    if (this.max < this.boot) throw new ConfigError('--cpus: max must not be below boot', { boot: this.boot, max: this.max });
  }

  toJSON(): { boot_vcpus: number; max_vcpus: number } {
    return { boot_vcpus: this.boot, max_vcpus: this.max };
  }

  static fromJSON(j: { boot_vcpus?: number; max_vcpus?: number }): CpusConfig {
    const c = new CpusConfig(j.boot_vcpus ?? 1, j.max_vcpus ?? j.boot_vcpus ?? 1);
    c.validate();
    return c;
  }
}
