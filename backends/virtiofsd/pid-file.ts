import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { closeQuiet, O_CREAT, O_WRONLY, openFile, write } from '../../protocol/sys/fd.js';
import { flock, fstat, ftruncate, LOCK_EX, LOCK_NB } from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { hostPid } from '../../protocol/sys/proc.js';
import { E, FsConfigError } from './errors.js';

/**
 * virtiofsd's `<socket>.pid`, taken before the socket is bound: it holds the daemon's pid and an exclusive flock for
 * as long as the daemon lives, so a second daemon given the same socket path stops with an error instead of
 * unlinking the first one's socket and leaving it waiting for a front-end that can no longer reach it. Returns the
 * fd, which stays open until exit; the file is left behind at exit, as virtiofsd leaves it (it then holds no lock).
 */
export function lockPidFile(socketPath: string): number {
  const path = `${socketPath}.pid`;
  for (;;) {
    let fd: number;
    try {
      fd = openFile(path, O_WRONLY | O_CREAT, 0o600);
    } catch (e) {
      if (e instanceof SysError && e.errno === E.ENOENT) throw new FsConfigError(`the socket's directory ${dirname(socketPath)} does not exist`, { socket: socketPath });
      throw new FsConfigError(`cannot create the pid file ${path}: ${(e as Error).message}`);
    }
    try {
      flock(fd, LOCK_EX | LOCK_NB);
    } catch (e) {
      closeQuiet(fd);
      if (e instanceof SysError && e.errno === E.EAGAIN) {
        throw new FsConfigError(`another daemon${holder(path)} is serving ${socketPath} (its pid file ${path} is locked)`);
      }
      throw new FsConfigError(`cannot lock the pid file ${path}: ${(e as Error).message}`);
    }
    // A daemon that exited between our open and our lock may have had its file replaced by a third one's:
    // only the file the path names now counts.
    const named = statSync(path, { throwIfNoEntry: false, bigint: true });
    const locked = fstat(fd);
    if (named !== undefined && BigInt.asUintN(64, named.ino) === BigInt(locked.ino) && Number(named.dev) === Number(locked.dev)) {
      ftruncate(fd, 0);
      write(fd, Buffer.from(`${hostPid()}\n`));
      return fd;
    }
    closeQuiet(fd);
  }
}

function holder(path: string): string {
  try {
    const pid = readFileSync(path, 'utf8').trim();
    return /^\d+$/.test(pid) ? ` (pid ${pid})` : '';
  } catch {
    return '';
  }
}
