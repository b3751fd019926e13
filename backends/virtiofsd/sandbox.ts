import type { Logger } from '../../protocol/log.js';
import * as fs from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { FsConfigError } from './errors.js';
import type { FsOptions } from './options.js';

const EPERM = 1;
const O_PATH = 0o10000000;
const O_DIRECTORY = 0o200000;

export interface SandboxFds {
  rootFd: number;
  procSelfFd: number;
  /** The thread has its own fs_struct (cwd/root/umask), so fchdir in it is private. */
  threadCwd: boolean;
}

/**
 * Confines the calling (worker) thread. Node runs many threads, so the process cannot be sandboxed as
 * a whole (module loading on other threads needs the real root); instead the thread that serves FUSE
 * requests takes its own fs_struct (unshare(CLONE_FS)) and, for `namespace`, its own mount and network
 * namespaces, then pivots (or chroots) into the shared directory. The fds it needs later (/proc/self/fd
 * and the shared directory) are opened first.
 */
export function enterSandbox(opts: FsOptions, log: Logger): SandboxFds {
  const procSelfFd = fs.openat(fs.AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY);
  fs.unshare(fs.CLONE_FS);
  fs.umask(0);
  let mode = opts.sandbox;
  if (mode === 'namespace') {
    try {
      namespaceSandbox(opts.sharedDir);
    } catch (e) {
      const why = e instanceof SysError ? `${e.call}: ${e.code}` : String(e);
      log.warn(`namespace sandbox unavailable (${why}); falling back to chroot`);
      mode = 'chroot';
    }
  }
  if (mode === 'chroot') {
    try {
      fs.chroot(opts.sharedDir);
    } catch (e) {
      if (!(e instanceof SysError) || e.errno !== EPERM) throw e;
      throw new FsConfigError(`--sandbox=${opts.sandbox} needs CAP_SYS_ADMIN (namespace) or CAP_SYS_CHROOT (chroot): run kumo-virtiofsd ` +
        'as root, or unprivileged with --sandbox=namespace (it then makes its own user namespace), or pass --sandbox=none');
    }
    fs.chdir('/');
  }
  const rootFd = fs.openat(fs.AT_FDCWD, mode === 'none' ? opts.sharedDir : '/', O_PATH | O_DIRECTORY);
  log.info({ sandbox: mode }, 'sandbox entered');
  return { rootFd, procSelfFd, threadCwd: true };
}

function namespaceSandbox(dir: string): void {
  // Only this thread moves: CLONE_NEWNS implies a private fs_struct, the rest of the process keeps its view.
  fs.unshare(fs.CLONE_NEWNS | fs.CLONE_NEWNET);
  // Stop our mount changes (and the detach below) from propagating back to the host's namespace.
  fs.mount(null, '/', null, fs.MS_REC | fs.MS_SLAVE);
  // pivot_root needs new_root to be a mount point: bind the shared dir onto itself.
  fs.mount(dir, dir, null, fs.MS_BIND | fs.MS_REC);
  fs.chdir(dir);
  fs.pivotRoot('.', '.');
  fs.umount2('.', fs.MNT_DETACH);
  fs.chdir('/');
}
