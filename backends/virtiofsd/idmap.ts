import { FsConfigError } from './errors.js';

/**
 * --translate-uid / --translate-gid: virtiofsd's in-daemon ID translation between guest and host (same rule
 * syntax and meaning as the Rust virtiofsd). Each rule is `TYPE:FROM:TO:COUNT` (forbid-guest: `FROM:COUNT`):
 *   guest        guest IDs [FROM, FROM+COUNT) become host IDs [TO, TO+COUNT), guest to host only
 *   host         host IDs [FROM, FROM+COUNT) become guest IDs [TO, TO+COUNT), host to guest only
 *   map          both of the above (FROM is the guest base, TO the host base)
 *   squash-guest every guest ID in [FROM, FROM+COUNT) becomes host ID TO
 *   squash-host  every host ID in [FROM, FROM+COUNT) becomes guest ID TO
 *   forbid-guest a request that would give a host file a guest ID in [FROM, FROM+COUNT) fails with EPERM
 * IDs no rule covers pass unchanged. The ranges of one direction may not overlap.
 */
export type IdRuleType = 'guest' | 'host' | 'map' | 'squash-guest' | 'squash-host' | 'forbid-guest';

/** One rule; plain data so that it crosses to the request thread in FsOptions. */
export interface IdRule {
  type: IdRuleType;
  from: number;
  /** Target base (1:1 rules) or the single target (squash); 0 for forbid-guest. */
  to: number;
  count: number;
}

const TYPES: readonly IdRuleType[] = ['guest', 'host', 'map', 'squash-guest', 'squash-host', 'forbid-guest'];
const ID_SPACE = 2 ** 32;
/** toHost's answer for a guest ID that forbid-guest refuses. */
export const FORBIDDEN = -1;

/** `v` as an ID (decimal, an optional leading +, 0 to 2^32-1), or -1. */
function idNumber(v: string): number {
  const n = /^\+?\d+$/.test(v) ? Number(v) : NaN;
  return Number.isSafeInteger(n) && n < ID_SPACE ? n : -1;
}

function u32(option: string, spec: string, what: string, v: string): number {
  const n = idNumber(v);
  if (n < 0) throw new FsConfigError(`--${option}: ${what} must be a number from 0 to 4294967295`, { rule: spec, value: v });
  return n;
}

/**
 * Parses one --translate-uid / --translate-gid value (`option` names it in errors). As in virtiofsd the type is
 * matched in any case and the fields may be separated by any one character that is not a letter, digit, - or _.
 */
export function parseIdRule(option: string, spec: string): IdRule {
  const typeText = /^[\p{L}\p{N}_-]*/u.exec(spec)?.[0] ?? '';
  const sep = spec.charAt(typeText.length);
  const parts = [typeText, ...(sep === '' ? [] : spec.slice(typeText.length + 1).split(sep))];
  const type = typeText.toLowerCase() as IdRuleType;
  if (!TYPES.includes(type)) throw new FsConfigError(`--${option}: unknown type '${typeText}' (${TYPES.join(', ')})`, { rule: spec });
  const forbid = type === 'forbid-guest';
  const want = forbid ? 3 : 4;
  if (parts.length !== want) {
    const form = forbid ? 'forbid-guest:FROM:COUNT' : `${type}:FROM:TO:COUNT`;
    throw new FsConfigError(`--${option}: '${spec}' must have the form ${form}`, { rule: spec });
  }
  const from = u32(option, spec, 'FROM', parts[1]);
  const to = forbid ? 0 : u32(option, spec, 'TO', parts[2]);
  const count = u32(option, spec, 'COUNT', parts[want - 1]);
  // The last ID of a range must fit in 32 bits (4294967295 itself is no ID); a COUNT of 0 is an empty rule.
  if (from + count >= ID_SPACE) throw new FsConfigError(`--${option}: '${spec}' runs past ID 4294967294`, { rule: spec });
  if ((type === 'guest' || type === 'host' || type === 'map') && to + count >= ID_SPACE) {
    throw new FsConfigError(`--${option}: '${spec}' maps past ID 4294967294`, { rule: spec });
  }
  return { type, from, to, count };
}

/**
 * One --uid-map / --gid-map range: host IDs [outside, outside+count) appear in the daemon's user namespace as
 * [inside, inside+count). Unlike the --translate rules, the kernel applies it (see namespaces.ts).
 */
export interface IdRange {
  inside: number;
  outside: number;
  count: number;
}

/** virtiofsd's `:INSIDE:OUTSIDE:COUNT:`; the delimiter is the last character (any non-alphanumeric), and leads too. */
export function parseIdRange(option: string, v: string): IdRange {
  const d = v.at(-1) ?? '';
  const fields = v.length > 2 && !/[\p{L}\p{N}]/u.test(d) && v.startsWith(d) ? v.slice(1, -1).split(d).map(idNumber) : [];
  if (fields.length !== 3 || fields.some((n) => n < 0)) {
    throw new FsConfigError(`--${option} must be :INSIDE:OUTSIDE:COUNT: (IDs in the namespace, on the host, how many), e.g. :0:100000:65536:`, { value: v });
  }
  const [inside, outside, count] = fields;
  if (count === 0 || inside + count > ID_SPACE || outside + count > ID_SPACE) throw new FsConfigError(`--${option}: the range is empty or runs past 2^32`, { value: v });
  return { inside, outside, count };
}

/** A range of one direction: IDs [from, from+count) go to `to` (+ offset unless squashed), or are refused. */
interface Range {
  from: number;
  end: number;
  to: number;
  squash: boolean;
  forbid: boolean;
  rule: IdRule;
}

function ruleText(r: IdRule): string {
  return r.type === 'forbid-guest' ? `forbid-guest:${r.from}:${r.count}` : `${r.type}:${r.from}:${r.to}:${r.count}`;
}

/** Adds rule r's range of one direction: IDs [from, from + r.count) to `to`. */
function add(option: string, ranges: Range[], r: IdRule, from: number, to: number, squash = false, forbid = false): void {
  const end = from + r.count;
  for (const o of ranges) {
    if (from < o.end && o.from < end) {
      throw new FsConfigError(`--${option}: '${ruleText(r)}' overlaps '${ruleText(o.rule)}' in the same direction`, { rule: ruleText(r) });
    }
  }
  ranges.push({ from, end, to, squash, forbid, rule: r });
}

function find(ranges: Range[], id: number): number {
  for (let k = 0; k < ranges.length; k++) {
    const r = ranges[k];
    if (id >= r.from && id < r.end) return r.forbid ? FORBIDDEN : r.squash ? r.to : r.to + (id - r.from);
  }
  return id;
}

/** The translation of one kind of ID (UIDs or GIDs) in both directions. */
export class IdMap {
  private readonly toHostRanges: Range[] = [];
  private readonly toGuestRanges: Range[] = [];

  /** Throws FsConfigError naming `option` for ranges that overlap within one direction. */
  constructor(rules: readonly IdRule[], option: string) {
    for (const r of rules) {
      switch (r.type) {
        case 'guest': add(option, this.toHostRanges, r, r.from, r.to); break;
        case 'host': add(option, this.toGuestRanges, r, r.from, r.to); break;
        case 'map':
          add(option, this.toHostRanges, r, r.from, r.to);
          add(option, this.toGuestRanges, r, r.to, r.from);
          break;
        case 'squash-guest': add(option, this.toHostRanges, r, r.from, r.to, true); break;
        case 'squash-host': add(option, this.toGuestRanges, r, r.from, r.to, true); break;
        case 'forbid-guest': add(option, this.toHostRanges, r, r.from, 0, false, true); break;
      }
    }
  }

  /** The host ID for a guest ID, or FORBIDDEN. */
  toHost(guestId: number): number {
    return find(this.toHostRanges, guestId >>> 0);
  }

  /** The guest ID for a host ID. */
  toGuest(hostId: number): number {
    return find(this.toGuestRanges, hostId >>> 0);
  }
}

export interface IdMaps {
  uid: IdMap;
  gid: IdMap;
}

/** The UID and GID maps of a share, or null when neither has rules (nothing is translated). */
export function idMaps(uid: readonly IdRule[], gid: readonly IdRule[]): IdMaps | null {
  if (uid.length === 0 && gid.length === 0) return null;
  return { uid: new IdMap(uid, 'translate-uid'), gid: new IdMap(gid, 'translate-gid') };
}
