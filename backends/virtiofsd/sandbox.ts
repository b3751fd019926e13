import type { Logger } from '../../protocol/log.js';
import * as fs from '../../protocol/sys/fs.js';
import { SysError } from '../../protocol/sys/libc.js';
import { SetupError } from '../../protocol/errors.js';
import { closeQuiet } from '../../protocol/sys/fd.js';
import { FsConfigError } from './errors.js';
import type { FsOptions } from './options.js';

const EPERM = 1;
const ENOSYS = 38;
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
  try {
    fs.unshare(fs.CLONE_FS);
  } catch (e) {
    if (!(e instanceof SysError) || (e.errno !== EPERM && e.errno !== ENOSYS)) throw e;
    // Every mode needs it: the request thread's umask (0) and working directory must not be the whole process's.
    throw new SetupError(`unshare(CLONE_FS) was refused (${e.code}): a seccomp profile refuses unshare (Docker's default ` +
      'without CAP_SYS_ADMIN does); allow unshare for kumo-virtiofsd (e.g. docker run --security-opt seccomp=PROFILE)');
  }
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
      const remedy = process.geteuid?.() === 0
        ? 'it runs as root without them (a container dropped them): add CAP_SYS_CHROOT (or CAP_SYS_ADMIN), or pass --sandbox=none'
        : 'run kumo-virtiofsd as root, or unprivileged with --sandbox=namespace (it then makes its own user namespace), or pass --sandbox=none';
      throw new FsConfigError(`--sandbox=${opts.sandbox} needs CAP_SYS_ADMIN (namespace) or CAP_SYS_CHROOT (chroot): ${remedy}`);
    }
    fs.chdir('/');
  }
  const rootFd = fs.openat(fs.AT_FDCWD, mode === 'none' ? opts.sharedDir : '/', O_PATH | O_DIRECTORY);
  checkOpenat2(rootFd);
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

/** Every guest path is resolved with openat2 and RESOLVE_BENEATH: without it no request could be served. */
function checkOpenat2(rootFd: number): void {
  try {
    closeQuiet(fs.openat2(rootFd, '.', O_PATH | O_DIRECTORY, 0, fs.RESOLVE_BENEATH));
  } catch (e) {
    if (!(e instanceof SysError) || (e.errno !== EPERM && e.errno !== ENOSYS)) throw e;
    throw new SetupError(`openat2 is unavailable (${e.code}): kumo-virtiofsd resolves every guest path with it, beneath the shared ` +
      'directory (Linux 5.6 and later); a seccomp profile may refuse it (older Docker profiles do): allow openat2');
  }
}
