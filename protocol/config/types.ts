import { OptionsError, splitList, unquote } from './tokenize.js';

/** How one option's value is parsed, checked and written back. */
export interface OptionType<T> {
  /** Syntax hint shown in errors and SYNTAX strings, e.g. "<int>", "on|off". */
  readonly hint: string;
  readonly required: boolean;
  readonly defaultValue: T | undefined;
  /** raw is null for a bare key. Throws OptionsError naming `key`. */
  parse(raw: string | null, key: string): T;
  format(v: NonNullable<T>): string;
}

interface Common<T> {
  required?: boolean;
  default?: T;
}
/** T when the option is required or has a default, else T | undefined. */
export type Out<O, T> = O extends { required: true } ? T : O extends { default: T } ? T : T | undefined;

function bad(key: string, raw: string | null, expected: string): OptionsError {
  return new OptionsError(`invalid value ${raw === null ? '(none)' : JSON.stringify(raw)} for "${key}": expected ${expected}`, { key, value: raw });
}

function make<T>(hint: string, o: Common<T>, parse: (raw: string | null, key: string) => T, format: (v: T) => string): OptionType<T> {
  return { hint, required: o.required === true, defaultValue: o.default, parse, format: format as (v: NonNullable<T>) => string };
}

const NEEDS_QUOTES = /[,[\]=\s]/;

function formatString(v: string): string {
  if (v.includes('"')) throw new OptionsError('a value containing a double quote cannot be written as an option string', { value: v });
  return v === '' || NEEDS_QUOTES.test(v) ? `"${v}"` : v;
}

export interface StrOptions extends Common<string> {
  /** Allowed values (case-sensitive). */
  choices?: readonly string[];
  pattern?: RegExp;
  hint?: string;
}

export function str<O extends StrOptions = {}>(opts?: O): OptionType<Out<O, string>>;
export function str(o: StrOptions = {}): OptionType<string> {
  const hint = o.hint ?? (o.choices ? o.choices.join('|') : '<string>');
  return make<string>(hint, o, (raw, key) => {
    if (raw === null) throw bad(key, raw, hint);
    // Cloud Hypervisor's option parser trims values: `socket=/run/s ` names /run/s, not a file ending in a space.
    const v = unquote(raw.trim());
    if (o.choices && !o.choices.includes(v)) throw bad(key, raw, `one of ${o.choices.join(', ')}`);
    if (o.pattern && !o.pattern.test(v)) throw bad(key, raw, hint);
    if (o.required && v === '') throw bad(key, raw, `a non-empty ${hint}`);
    return v;
  }, formatString);
}

export interface IntOptions extends Common<number> {
  /** Default 0. */
  min?: number;
  max?: number;
}

const INT_RE = /^([+-]?)(0x[0-9a-f]+|[0-9]+)$/i;

export function parseInteger(s: string): number | null {
  const m = INT_RE.exec(s.trim());
  if (!m) return null;
  const n = Number(m[2]) * (m[1] === '-' ? -1 : 1);
  return Number.isSafeInteger(n) ? n : null;
}

export function int<O extends IntOptions = {}>(opts?: O): OptionType<Out<O, number>>;
export function int(o: IntOptions = {}): OptionType<number> {
  const min = o.min ?? 0;
  const max = o.max ?? Number.MAX_SAFE_INTEGER;
  const range = o.max !== undefined ? `an integer between ${min} and ${max}` : `an integer >= ${min}`;
  return make<number>('<int>', o, (raw, key) => {
    const n = raw === null ? null : parseInteger(unquote(raw));
    if (n === null || n < min || n > max) throw bad(key, raw, range);
    return n;
  }, (v) => String(v));
}

const BOOL: Record<string, boolean> = { on: true, true: true, off: false, false: false };

export function bool(defaultValue: boolean): OptionType<boolean>;
export function bool<O extends Common<boolean> = {}>(opts?: O): OptionType<Out<O, boolean>>;
export function bool(o: boolean | Common<boolean> = {}): OptionType<boolean> {
  const c: Common<boolean> = typeof o === 'boolean' ? { default: o } : o;
  return make<boolean>('on|off', c, (raw, key) => {
    if (raw === null) return true;
    const v = BOOL[unquote(raw).trim().toLowerCase()];
    if (v === undefined) throw bad(key, raw, 'on, off, true or false');
    return v;
  }, (v) => (v ? 'on' : 'off'));
}

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };
const SIZE_RE = /^(0x[0-9a-f]+|[0-9]+)([KMGT]?)$/i;

/** "512M" → 536870912 (binary units); null if malformed or not a safe integer. */
export function parseSize(s: string): number | null {
  const m = SIZE_RE.exec(s.trim());
  if (!m) return null;
  const n = Number(m[1]) * UNITS[m[2].toUpperCase()];
  return Number.isSafeInteger(n) ? n : null;
}

/** Largest exact unit: 1073741824 → "1G", 1000 → "1000". */
export function formatSize(n: number): string {
  for (const u of ['T', 'G', 'M', 'K'] as const) {
    if (n !== 0 && n % UNITS[u] === 0) return `${n / UNITS[u]}${u}`;
  }
  return String(n);
}

export interface SizeOptions extends Common<number> {
  min?: number;
  max?: number;
}

export function size<O extends SizeOptions = {}>(opts?: O): OptionType<Out<O, number>>;
export function size(o: SizeOptions = {}): OptionType<number> {
  const min = o.min ?? 0;
  const max = o.max ?? Number.MAX_SAFE_INTEGER;
  return make<number>('<size>[K|M|G|T]', o, (raw, key) => {
    const n = raw === null ? null : parseSize(unquote(raw));
    if (n === null) throw bad(key, raw, 'a size such as 4096, 512K, 1G');
    if (n < min || n > max) throw bad(key, raw, `a size between ${formatSize(min)} and ${formatSize(max)}`);
    return n;
  }, formatSize);
}

export interface ListOptions<E> extends Common<E[]> {
  minItems?: number;
  maxItems?: number;
}

/** "[a,b,c]" (or a single unbracketed item) parsed item by item. */
export function list<E, O extends ListOptions<E> = {}>(item: OptionType<E>, opts?: O): OptionType<Out<O, E[]>>;
export function list<E>(item: OptionType<E>, o: ListOptions<E> = {}): OptionType<E[]> {
  const hint = `[${item.hint},...]`;
  return make<E[]>(hint, o, (raw, key) => {
    if (raw === null) throw bad(key, raw, hint);
    const items = splitList(raw).map((x) => item.parse(x, key));
    if (items.length < (o.minItems ?? 0) || items.length > (o.maxItems ?? Infinity)) {
      throw bad(key, raw, `${hint} with ${o.minItems ?? 0} to ${o.maxItems ?? 'any number of'} items`);
    }
    return items;
  }, (v) => `[${v.map((x) => item.format(x as NonNullable<E>)).join(',')}]`);
}

/** Any type defined by a parse function (throw or return null for a bad value). */
export function custom<T, O extends Common<T> = {}>(
  hint: string,
  parse: (v: string) => T | null,
  format: (v: T) => string,
  opts?: O,
): OptionType<Out<O, T>>;
export function custom<T>(hint: string, parse: (v: string) => T | null, format: (v: T) => string, o: Common<T> = {}): OptionType<T> {
  return make<T>(hint, o, (raw, key) => {
    if (raw === null) throw bad(key, raw, hint);
    let v: T | null;
    try {
      v = parse(unquote(raw));
    } catch (e) {
      throw bad(key, raw, `${hint} (${e instanceof Error ? e.message : String(e)})`);
    }
    if (v === null) throw bad(key, raw, hint);
    return v;
  }, format);
}
