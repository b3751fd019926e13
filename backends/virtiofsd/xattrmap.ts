import { E, FsConfigError, FsError } from './errors.js';

/**
 * --xattrmap: virtiofsd's xattr name mapping (same rule syntax and meaning as QEMU's C virtiofsd and the
 * Rust virtiofsd). Rules are tried in order and the first match decides:
 *   client names (GET/SET/REMOVEXATTR) match `key` as a prefix; server names (LISTXATTR) match `prepend`.
 *   prefix: the client name gets `prepend` in front of it; a server name loses `prepend`.
 *   ok: passed unchanged.  bad: EPERM (GETXATTR: ENODATA), hidden from lists.
 *   unsupported: EOPNOTSUPP, hidden from lists.
 * A name no rule matches is treated as `bad`.
 */
export type XattrRuleType = 'prefix' | 'ok' | 'bad' | 'unsupported';

/** One rule; plain data so that it crosses to the request thread in FsOptions. */
export interface XattrRule {
  type: XattrRuleType;
  client: boolean;
  server: boolean;
  key: string;
  prepend: string;
}

const TYPES: readonly string[] = ['prefix', 'ok', 'bad', 'unsupported'];
const SCOPES: Record<string, [boolean, boolean]> = { client: [true, false], server: [false, true], all: [true, true] };

/** Parses a mapping; the result ends with the implicit catch-all `bad` rule. */
export function parseXattrMap(spec: string): XattrRule[] {
  const rules: XattrRule[] = [];
  let pos = 0;
  const skipSpace = (): void => {
    while (pos < spec.length && /\s/.test(spec[pos])) pos++;
  };
  skipSpace();
  if (pos >= spec.length) throw new FsConfigError('--xattrmap: no rules');
  while (pos < spec.length) {
    const start = pos;
    const sep = spec[pos++];
    const field = (what: string): string => {
      const end = spec.indexOf(sep, pos);
      if (end < 0) throw new FsConfigError(`--xattrmap: rule at offset ${start} has no ${what} field ending in '${sep}'`, { rule: spec.slice(start) });
      const v = spec.slice(pos, end);
      pos = end + 1;
      return v;
    };
    const type = field('type');
    if (type === 'map') {
      const key = field('key');
      const prepend = field('prepend');
      skipSpace();
      if (pos < spec.length) throw new FsConfigError("--xattrmap: a 'map' rule must be the last rule", { rest: spec.slice(pos) });
      rules.push(...expandMap(key, prepend));
      break;
    }
    if (!TYPES.includes(type)) throw new FsConfigError(`--xattrmap: unknown rule type '${type}' (prefix, ok, bad, unsupported, map)`, { rule: spec.slice(start) });
    const scope = field('scope');
    const s = SCOPES[scope];
    if (s === undefined) throw new FsConfigError(`--xattrmap: unknown scope '${scope}' (client, server, all)`, { rule: spec.slice(start) });
    const key = field('key');
    const prepend = field('prepend');
    rules.push({ type: type as XattrRuleType, client: s[0], server: s[1], key, prepend });
    skipSpace();
  }
  rules.push({ type: 'bad', client: true, server: true, key: '', prepend: '' });
  return rules;
}

/** `:map:KEY:PREPEND:` as the rules it stands for. */
function expandMap(key: string, prepend: string): XattrRule[] {
  const rule = (type: XattrRuleType, scope: string, k: string, p: string): XattrRule =>
    ({ type, client: SCOPES[scope][0], server: SCOPES[scope][1], key: k, prepend: p });
  if (key === '') return [rule('prefix', 'all', '', prepend), rule('bad', 'all', '', '')];
  return [
    rule('prefix', 'all', key, prepend),
    rule('bad', 'server', '', key), // host attributes that look like unmapped guest ones stay hidden
    rule('bad', 'client', prepend, ''), // the guest cannot reach the mapped names directly
    rule('ok', 'all', '', ''),
  ];
}

interface CompiledRule {
  type: XattrRuleType;
  client: boolean;
  server: boolean;
  key: Buffer;
  prepend: Buffer;
}

function startsWith(name: Uint8Array, prefix: Buffer): boolean {
  if (prefix.length > name.length) return false;
  for (let i = 0; i < prefix.length; i++) if (name[i] !== prefix[i]) return false;
  return true;
}

/** Which xattr call a client name comes from: GETXATTR turns `bad` into ENODATA, as virtiofsd does. */
export type XattrAccess = 'get' | 'set';

export class XattrMap {
  private readonly rules: CompiledRule[];

  constructor(rules: readonly XattrRule[]) {
    this.rules = rules.map((r) => ({ ...r, key: Buffer.from(r.key), prepend: Buffer.from(r.prepend) }));
  }

  /** The host name for a name from the guest; throws the errno the guest gets when the name is refused. */
  toServer(name: Uint8Array, access: XattrAccess): Uint8Array {
    for (const r of this.rules) {
      if (!r.client || !startsWith(name, r.key)) continue;
      switch (r.type) {
        case 'prefix': return Buffer.concat([r.prepend, name]);
        case 'ok': return name;
        case 'unsupported': throw new FsError(E.EOPNOTSUPP, 'xattr name unsupported by --xattrmap');
        case 'bad': throw new FsError(access === 'get' ? E.ENODATA : E.EPERM, 'xattr name refused by --xattrmap');
      }
    }
    throw new FsError(access === 'get' ? E.ENODATA : E.EPERM, 'xattr name matches no --xattrmap rule');
  }

  /** The guest's name for a host name in a list, or null when the guest must not see it. */
  toClient(name: Uint8Array): Uint8Array | null {
    for (const r of this.rules) {
      if (!r.server || !startsWith(name, r.prepend)) continue;
      switch (r.type) {
        case 'prefix': return name.subarray(r.prepend.length);
        case 'ok': return name;
        default: return null;
      }
    }
    return null;
  }

  /** Maps a NUL-separated host list (as flistxattr returns it) to the guest's list. */
  mapList(list: Uint8Array): Buffer {
    const out: Uint8Array[] = [];
    const nul = Buffer.of(0);
    let start = 0;
    for (let i = 0; i < list.length; i++) {
      if (list[i] !== 0) continue;
      const mapped = i > start ? this.toClient(list.subarray(start, i)) : null;
      // A name the prefix rule strips to nothing would read as the list's end: hide it.
      if (mapped !== null && mapped.length > 0) out.push(mapped, nul);
      start = i + 1;
    }
    return Buffer.concat(out);
  }
}
