import { E, FsError } from './errors.js';

/**
 * The longest name a guest may send (FUSE_NAME_MAX, as the guest's FUSE client): the host file system applies its own
 * limit, which is not 255 bytes everywhere (vfat and exfat count 255 UTF-16 units, FUSE file systems take 1024).
 */
const NAME_MAX = 1024;

/** errno for a bad guest name in name[0..len), 0 if it is one non-empty component that cannot climb. */
export function nameErrno(name: Uint8Array, len: number): number {
  if (len <= 0) return E.ENOENT;
  if (len > NAME_MAX) return 36; // ENAMETOOLONG
  for (let k = 0; k < len; k++) {
    const b = name[k];
    if (b === 0x2f || b === 0) return E.EINVAL;
  }
  if (name[0] === 0x2e && (len === 1 || (len === 2 && name[1] === 0x2e))) return E.EINVAL;
  return 0;
}

/** Validates a guest-supplied name: one non-empty path component that cannot climb. */
export function checkName(name: Uint8Array): void {
  if (name.length === 0 || name.length > NAME_MAX) throw new FsError(name.length ? 36 : E.ENOENT, 'bad name length');
  if (name.includes(0x2f) || name.includes(0)) throw new FsError(E.EINVAL, 'name contains / or NUL');
  if (name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e))) {
    throw new FsError(E.EINVAL, 'name is . or ..');
  }
}
