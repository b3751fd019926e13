import { koffi, SysError } from './libc.js';

/**
 * Filesystem system calls for the virtio-fs backend: *at calls, openat2, xattrs, locks, per-thread
 * credentials and the sandbox calls. Path arguments accept a string or raw bytes (guest names need
 * not be UTF-8); all calls throw SysError on failure unless named `try*`.
 *
 * The one module callers import; the calls live by area: paths and AT_* flags (fs-path.ts), opening and file
 * handles (fs-open.ts), stat, statx and statfs (fs-stat.ts), directory entries (fs-names.ts), attributes and
 * xattrs (fs-attrs.ts), file data and sync (fs-data.ts), locks (fs-locks.ts), thread credentials (fs-creds.ts)
 * and the sandbox calls (fs-sandbox.ts).
 */

export { AT_FDCWD, AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH, cstr, type PathArg } from './fs-path.js';
export * from './fs-open.js';
export * from './fs-stat.js';
export * from './fs-names.js';
export * from './fs-attrs.js';
export * from './fs-data.js';
export * from './fs-locks.js';
export * from './fs-creds.js';
export * from './fs-sandbox.js';

export { SysError, koffi };
