import { KumoError } from '../errors.js';

/** A bad option string: the message names the key (when known) and the expected syntax. */
export class OptionsError extends KumoError {}

export interface OptionToken {
  key: string;
  /** null for a bare key ("readonly" instead of "readonly=on"). */
  value: string | null;
}

/**
 * Splits on `sep` outside brackets and double quotes: "a=[1,2],b=\"x,y\"" → ['a=[1,2]', 'b="x,y"'].
 * Throws OptionsError on unbalanced brackets or quotes.
 */
export function splitTopLevel(s: string, sep = ','): string[] {
  const out: string[] = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '"') quoted = !quoted;
    else if (quoted) continue;
    else if (c === '[') depth++;
    else if (c === ']') {
      if (--depth < 0) throw new OptionsError(`unbalanced "]" at position ${i}`, { input: s });
    } else if (c === sep && depth === 0) {
      out.push(s.slice(start, i));
      start = i + 1;
    }
  }
  if (quoted) throw new OptionsError('unterminated quote', { input: s });
  if (depth !== 0) throw new OptionsError('unbalanced "["', { input: s });
  out.push(s.slice(start));
  return out;
}

/** "k=v,k2=[a,b],flag" → tokens, in order. Empty segments (",,", trailing comma) are skipped. */
export function tokenize(input: string): OptionToken[] {
  const tokens: OptionToken[] = [];
  for (const part of splitTopLevel(input)) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    const key = (eq < 0 ? part : part.slice(0, eq)).trim();
    if (key === '' || /["[\]]/.test(key)) throw new OptionsError(`invalid option "${part}": expected key=value`, { input });
    tokens.push({ key, value: eq < 0 ? null : part.slice(eq + 1) });
  }
  return tokens;
}

/** Removes one pair of surrounding double quotes. */
export function unquote(v: string): string {
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
}

/** Contents of "[a,b]" as ['a','b'] (top-level commas only); a value without brackets is a one-item list. */
export function splitList(v: string): string[] {
  const t = v.trim();
  if (t.startsWith('[') && t.endsWith(']')) {
    const inner = t.slice(1, -1);
    if (inner.trim() === '') return [];
    return splitTopLevel(inner).map((x) => x.trim());
  }
  return t === '' ? [] : [t];
}
