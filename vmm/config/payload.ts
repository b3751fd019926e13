import { ConfigError } from './errors.js';

/** --kernel / --initramfs / --cmdline. */
export class PayloadConfig {
  constructor(
    readonly kernel: string,
    readonly initramfs: string | null = null,
    readonly cmdline = '',
  ) {}

  validate(): void {
    if (!this.kernel) throw new ConfigError('--kernel is required');
    if (/[\0]/.test(this.cmdline)) throw new ConfigError('--cmdline must not contain NUL bytes');
  }

  toJSON(): { kernel: string; initramfs: string | null; cmdline: string } {
    return { kernel: this.kernel, initramfs: this.initramfs, cmdline: this.cmdline };
  }
}
