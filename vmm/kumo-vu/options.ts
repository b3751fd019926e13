import { InvalidArgumentError } from 'commander';

/** Sizes like 4k, 1M, 512 (bytes). */
export function parseSize(v: string): number {
  const m = /^(\d+)([kKmMgG]?)[bB]?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`not a size: ${v}`);
  const mult = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

export function parseCount(min: number, max: number): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer in ${min}..${max}`);
    return n;
  };
}

export function parsePositive(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number');
  return n;
}
