import { describe, expect, it } from 'vitest';
import {
  bool,
  custom,
  describeSyntax,
  formatSize,
  int,
  list,
  OptionsError,
  parseOptions,
  parseSize,
  size,
  splitTopLevel,
  str,
  tokenize,
  toOptionString,
} from '../../protocol/config/options.js';

const diskSchema = {
  path: str({ required: true }),
  num_queues: int({ default: 1, min: 1, max: 64 }),
  queue_size: int({ default: 128, min: 1, max: 32768 }),
  readonly: bool(false),
  direct: bool(),
  id: str(),
  size: size({ default: 0 }),
  affinity: list(int()),
  mode: str({ choices: ['server', 'client'] as const, default: 'client' }),
};

describe('tokenizer', () => {
  it('splits on top-level commas only', () => {
    expect(splitTopLevel('a=1,b=[1,2,[3,4]],c="x,y]",d')).toEqual(['a=1', 'b=[1,2,[3,4]]', 'c="x,y]"', 'd']);
  });
  it('gives bare keys a null value and skips empty segments', () => {
    expect(tokenize('path=/a,readonly,,x=1,')).toEqual([
      { key: 'path', value: '/a' },
      { key: 'readonly', value: null },
      { key: 'x', value: '1' },
    ]);
  });
  it('keeps "=" inside values', () => {
    expect(tokenize('cmd=a=b')).toEqual([{ key: 'cmd', value: 'a=b' }]);
  });
  it('refuses unbalanced brackets and quotes', () => {
    expect(() => tokenize('a=[1,2')).toThrow(OptionsError);
    expect(() => tokenize('a=1]')).toThrow(OptionsError);
    expect(() => tokenize('a="x')).toThrow(OptionsError);
    expect(() => tokenize('=1')).toThrow(OptionsError);
  });
});

describe('parseOptions', () => {
  it('parses a full line with typed results and defaults', () => {
    const o = parseOptions('path="/tmp/a b,c.img",num_queues=0x4,readonly=on,size=2G,affinity=[0,2,3],mode=server', diskSchema);
    expect(o).toEqual({
      path: '/tmp/a b,c.img',
      num_queues: 4,
      queue_size: 128,
      readonly: true,
      direct: undefined,
      id: undefined,
      size: 2 * 1024 ** 3,
      affinity: [0, 2, 3],
      mode: 'server',
    });
    // Compile-time: required/defaulted fields are not optional.
    const n: number = o.num_queues;
    const p: string = o.path;
    const d: boolean | undefined = o.direct;
    expect([n, p, d]).toHaveLength(3);
  });

  it('accepts true/false, bare booleans and single-item lists', () => {
    const o = parseOptions('path=/x,readonly=false,direct,affinity=5', diskSchema);
    expect(o.readonly).toBe(false);
    expect(o.direct).toBe(true);
    expect(o.affinity).toEqual([5]);
  });

  it.each([
    ['path=/x,bogus=1', /unknown option "bogus"/],
    ['num_queues=2', /missing required option "path"/],
    ['path=/x,num_queues=0', /"num_queues": expected an integer between 1 and 64/],
    ['path=/x,num_queues=65', /"num_queues"/],
    ['path=/x,num_queues=1.5', /"num_queues"/],
    ['path=/x,num_queues=abc', /"num_queues"/],
    ['path=/x,num_queues', /"num_queues"/],
    ['path=/x,readonly=yes', /"readonly": expected on, off, true or false/],
    ['path=/x,size=12Q', /"size"/],
    ['path=/x,size=99999999999T', /"size"/],
    ['path=/x,affinity=[1,x]', /"affinity"/],
    ['path=/x,mode=both', /"mode": expected one of server, client/],
    ['path=/x,path=/y', /given twice/],
    ['path=', /"path"/],
    ['path', /"path"/],
    ['path=[/x', /unbalanced/],
  ])('%s → OptionsError', (input, msg) => {
    let err: unknown;
    try {
      parseOptions(input, diskSchema);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OptionsError);
    expect((err as Error).message).toMatch(msg);
    expect((err as Error).message).toContain('syntax: path=<string>');
  });

  it('does not treat prototype keys as known options', () => {
    expect(() => parseOptions('path=/x,constructor=1', diskSchema)).toThrow(/unknown option "constructor"/);
    expect(() => parseOptions('path=/x,__proto__=1', diskSchema)).toThrow(OptionsError);
  });

  it('supports custom item types inside lists', () => {
    const schema = {
      ranges: list(custom('<a>-<b>', (v) => {
        const m = /^(\d+)-(\d+)$/.exec(v);
        return m ? { from: Number(m[1]), to: Number(m[2]) } : null;
      }, (r) => `${r.from}-${r.to}`)),
    };
    expect(parseOptions('ranges=[0-3,8-9]', schema).ranges).toEqual([{ from: 0, to: 3 }, { from: 8, to: 9 }]);
    expect(() => parseOptions('ranges=[0-3,x]', schema)).toThrow(/"ranges"/);
    expect(toOptionString(schema, { ranges: [{ from: 1, to: 2 }] })).toBe('ranges=[1-2]');
  });
});

describe('sizes and integers', () => {
  it('parses binary suffixes and hex', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('512K')).toBe(512 * 1024);
    expect(parseSize('512m')).toBe(512 * 1024 * 1024);
    expect(parseSize('1G')).toBe(1 << 30);
    expect(parseSize('2T')).toBe(2 * 1024 ** 4);
    expect(parseSize('0x1000')).toBe(4096);
    expect(parseSize('-1')).toBeNull();
    expect(parseSize('1.5G')).toBeNull();
    expect(parseSize('')).toBeNull();
  });
  it('formats with the largest exact unit', () => {
    expect(formatSize(1 << 30)).toBe('1G');
    expect(formatSize(1536 * 1024)).toBe('1536K');
    expect(formatSize(1000)).toBe('1000');
    expect(formatSize(0)).toBe('0');
  });
  it('honours negative minimums only when allowed', () => {
    expect(parseOptions('n=-3', { n: int({ min: -5 }) }).n).toBe(-3);
    expect(() => parseOptions('n=-3', { n: int() })).toThrow(OptionsError);
  });
});

describe('toOptionString', () => {
  it('round-trips through parseOptions', () => {
    const input = 'path="/tmp/a b,c.img",num_queues=4,readonly=on,size=2G,affinity=[0,2],mode=server,id=disk0';
    const o = parseOptions(input, diskSchema);
    const s = toOptionString(diskSchema, o);
    expect(s).toBe('path="/tmp/a b,c.img",num_queues=4,readonly=on,id=disk0,size=2G,affinity=[0,2],mode=server');
    expect(parseOptions(s, diskSchema)).toEqual(o);
  });
  it('can include defaults and refuses unrepresentable strings', () => {
    expect(toOptionString({ a: int({ default: 1 }), b: bool(false) }, { a: 1, b: false }, { includeDefaults: true })).toBe('a=1,b=off');
    expect(() => toOptionString({ p: str() }, { p: 'a"b' })).toThrow(OptionsError);
  });
  it('describes the syntax', () => {
    expect(describeSyntax({ a: int(), path: str({ required: true }), ro: bool(false) })).toBe('path=<string>,a=<int>,ro=on|off');
  });
});
