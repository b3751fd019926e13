import { describe, expect, it } from 'vitest';
import { CopySpread } from '../../protocol/sys/copy-spread.js';

const take = (s: CopySpread, threads: number, n: number) => Array.from({ length: n }, () => s.next(threads));

describe('CopySpread', () => {
  it('sends every other copy to io-wq with 2 CPUs and one request thread', () => {
    expect(take(new CopySpread(2), 1, 6)).toEqual([true, false, true, false, true, false]);
  });

  it('keeps one copy in every 16 on the request thread with 16 CPUs', () => {
    const got = take(new CopySpread(16), 1, 32);
    expect(got.filter((x) => !x)).toHaveLength(2);
    expect(got[15]).toBe(false);
    expect(got[31]).toBe(false);
  });

  it('divides the CPUs among the request threads', () => {
    const s = new CopySpread(16);
    expect(s.share(3)).toBe(5);
    expect(take(s, 3, 5)).toEqual([true, true, true, true, false]);
  });

  it('keeps every copy when a thread has one CPU or less to itself', () => {
    expect(take(new CopySpread(2), 2, 4)).toEqual([false, false, false, false]);
    expect(take(new CopySpread(4), 5, 4)).toEqual([false, false, false, false]);
    expect(take(new CopySpread(1), 0, 3)).toEqual([false, false, false]);
  });
});
