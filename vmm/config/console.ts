import { ConfigError } from './errors.js';

export type ConsoleMode = 'Off' | 'Null' | 'Tty' | 'File';

/**
 * --serial / --console: off | null | tty | file=PATH (Cloud Hypervisor syntax; pty and socket are
 * CH modes kumo does not offer and are refused by name).
 */
export class ConsoleConfig {
  static readonly SYNTAX = 'off|null|tty|file=<path>';

  constructor(
    readonly mode: ConsoleMode,
    readonly file: string | null = null,
  ) {}

  static parse(s: string, what = '--console'): ConsoleConfig {
    const v = s.trim();
    if (v === 'off') return new ConsoleConfig('Off');
    if (v === 'null') return new ConsoleConfig('Null');
    if (v === 'tty') return new ConsoleConfig('Tty');
    if (v.startsWith('file=')) {
      const f = v.slice(5);
      if (f === '') throw new ConfigError(`${what}: file= needs a path (syntax: ${ConsoleConfig.SYNTAX})`);
      return new ConsoleConfig('File', f);
    }
    if (v === 'pty' || v.startsWith('socket=')) {
      throw new ConfigError(`${what}: mode "${v.split('=')[0]}" is not supported by kumo (syntax: ${ConsoleConfig.SYNTAX})`);
    }
    throw new ConfigError(`${what}: invalid value "${s}" (syntax: ${ConsoleConfig.SYNTAX})`, { value: s });
  }

  validate(): void {
    if (this.mode === 'File' && !this.file) throw new ConfigError('console mode File needs a file');
  }

  toJSON(): { mode: ConsoleMode; file: string | null } {
    return { mode: this.mode, file: this.file };
  }

  static fromJSON(j: { mode: ConsoleMode; file?: string | null }): ConsoleConfig {
    const c = new ConsoleConfig(j.mode, j.file ?? null);
    c.validate();
    return c;
  }
}
