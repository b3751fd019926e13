import * as fs from '../../protocol/sys/fs.js';
import { O_APPEND, O_DIRECT, O_EXCL, O_NONBLOCK, O_TRUNC } from '../../protocol/sys/fd.js';

/** open(2) flags that protocol/sys/fd.ts does not name; the others come from there. */
export const O_ACCMODE = 3;
export const O_DSYNC = 0o10000;
export const O_LARGEFILE = 0o100000;
export const O_NOATIME = 0o1000000;
export const O_SYNC = 0o4010000;
/** Open flags a guest may ask for; everything else (O_PATH, O_TMPFILE, O_NOCTTY...) is dropped. */
export const GUEST_OPEN_FLAGS = O_ACCMODE | O_APPEND | O_TRUNC | O_EXCL | O_NONBLOCK | O_DSYNC | O_SYNC | O_DIRECT | O_NOATIME | O_LARGEFILE;
/** openat2 resolve flags for a guest's name: one component below the parent, no symlink or magic link followed. */
export const RESOLVE = fs.RESOLVE_BENEATH | fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS;
