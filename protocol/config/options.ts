import { OptionsError, tokenize } from './tokenize.js';
import type { OptionType } from './types.js';

export { OptionsError, tokenize, splitTopLevel, splitList, unquote, type OptionToken } from './tokenize.js';
export { str, int, bool, size, list, custom, parseSize, formatSize, parseInteger, type OptionType, type Out } from './types.js';

export type OptionSchema = Record<string, OptionType<unknown>>;
export type ParsedOptions<S extends OptionSchema> = { [K in keyof S]: S[K] extends OptionType<infer T> ? T : never };

/** "path=<string>,num_queues=<int>,readonly=on|off" for a schema (required keys first). */
export function describeSyntax(schema: OptionSchema): string {
  const keys = Object.keys(schema).sort((a, b) => Number(schema[b].required) - Number(schema[a].required));
  return keys.map((k) => `${k}=${schema[k].hint}`).join(',');
}

/**
 * Parses a Cloud Hypervisor style "k=v,k=v" string against a schema. Unknown keys, repeated keys,
 * bad values and missing required keys throw OptionsError naming the key and the syntax.
 */
export function parseOptions<S extends OptionSchema>(input: string, schema: S, opts: { syntax?: string; what?: string } = {}): ParsedOptions<S> {
  const syntax = opts.syntax ?? describeSyntax(schema);
  const where = opts.what ? `${opts.what}: ` : '';
  const withSyntax = (e: OptionsError): OptionsError =>
    new OptionsError(`${where}${e.message} (syntax: ${syntax})`, { ...e.context, syntax, input });
  let tokens;
  try {
    tokens = tokenize(input);
  } catch (e) {
    throw e instanceof OptionsError ? withSyntax(e) : e;
  }
  const out: Record<string, unknown> = {};
  const seen = new Set<string>();
  for (const { key, value } of tokens) {
    const type = Object.hasOwn(schema, key) ? schema[key] : undefined;
    if (!type) throw withSyntax(new OptionsError(`unknown option "${key}"`, { key }));
    if (seen.has(key)) throw withSyntax(new OptionsError(`option "${key}" given twice`, { key }));
    seen.add(key);
    try {
      out[key] = type.parse(value, key);
    } catch (e) {
      throw e instanceof OptionsError ? withSyntax(e) : e;
    }
  }
  for (const [key, type] of Object.entries(schema)) {
    if (seen.has(key)) continue;
    if (type.required) throw withSyntax(new OptionsError(`missing required option "${key}"`, { key }));
    out[key] = type.defaultValue;
  }
  return out as ParsedOptions<S>;
}

/** The reverse of parseOptions: keys in schema order, undefined values (and defaults unless asked) left out. */
export function toOptionString<S extends OptionSchema>(
  schema: S,
  values: Partial<ParsedOptions<S>>,
  opts: { includeDefaults?: boolean } = {},
): string {
  const parts: string[] = [];
  for (const [key, type] of Object.entries(schema)) {
    const v = (values as Record<string, unknown>)[key];
    if (v === undefined || v === null) continue;
    if (!opts.includeDefaults && type.defaultValue !== undefined && sameValue(v, type.defaultValue)) continue;
    parts.push(`${key}=${type.format(v)}`);
  }
  return parts.join(',');
}

function sameValue(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  return a === b;
}
