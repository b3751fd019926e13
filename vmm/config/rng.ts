import { describeSyntax, parseOptions, str } from '../../protocol/config/options.js';

const schema = { src: str({ default: '/dev/urandom' }) };

/** --rng src=PATH (virtio-rng entropy source; Cloud Hypervisor syntax). */
export class RngConfig {
  static readonly SYNTAX = `--rng ${describeSyntax(schema)}`;

  constructor(readonly src = '/dev/urandom') {}

  static parse(s: string): RngConfig {
    const o = parseOptions(s, schema, { what: '--rng', syntax: RngConfig.SYNTAX });
    return new RngConfig(o.src);
  }

  validate(): void {}

  toJSON(): { src: string } {
    return { src: this.src };
  }
}
