import { CAP_NAMES, capNumber, type CapName } from '../../protocol/sys/caps.js';
import { FsConfigError } from './errors.js';

/**
 * What the request thread keeps, as virtiofsd keeps for itself: enough to act for any guest user (own,
 * chmod, chown, mknod, set file capabilities, switch fsuid/fsgid), nothing that reaches past the files.
 * Without CAP_SYS_ADMIN a guest cannot set trusted.* or security.* xattrs on host files (overlayfs
 * trusts trusted.overlay.*), and without CAP_SYS_RESOURCE it cannot fill the blocks reserved for root.
 */
const DEFAULT_CAPS: readonly CapName[] = ['chown', 'dac_override', 'fowner', 'fsetid', 'setgid', 'setuid', 'mknod', 'setfcap'];

/** --modcaps=+cap:-cap... as capability numbers. */
export interface ModCaps {
  add: number[];
  drop: number[];
}

export function parseModcaps(spec: string): ModCaps {
  const out: ModCaps = { add: [], drop: [] };
  for (const item of spec.split(':')) {
    const sign = item[0];
    const n = capNumber(item.slice(1));
    if ((sign !== '+' && sign !== '-') || n < 0) {
      throw new FsConfigError(`--modcaps: '${item}' is not +CAP or -CAP (CAP one of ${CAP_NAMES.join(', ')})`, { modcaps: spec });
    }
    (sign === '+' ? out.add : out.drop).push(n);
  }
  return out;
}

/** Capabilities the request thread keeps: the default set, CAP_DAC_READ_SEARCH for file handles, then --modcaps. */
export function requestThreadCaps(fileHandles: boolean, mod: ModCaps | null): number[] {
  const keep = new Set(DEFAULT_CAPS.map(capNumber));
  if (fileHandles) keep.add(capNumber('dac_read_search')); // open_by_handle_at
  for (const c of mod?.add ?? []) keep.add(c);
  for (const c of mod?.drop ?? []) keep.delete(c);
  return [...keep].sort((a, b) => a - b);
}
