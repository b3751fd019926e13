import type { SyscallName } from '../../protocol/sys/syscalls-x86_64.js';

/**
 * What the request thread may call once it serves guest requests (`--seccomp`, installed after the
 * sandbox, the io_uring and the eventfds are set up). Found by running every test that drives a real
 * daemon with `--seccomp=log` and reading the kernel's log of calls outside this list (the lab's real
 * guest, the comparison script with xattrs, locks and file handles, the bench, the fuzzers), plus the
 * variants other C libraries and CPUs use for the same calls (fstat, fchmodat2, pkey_mprotect).
 */
export const REQUEST_THREAD_SYSCALLS: readonly SyscallName[] = [
  // FUSE requests on the shared directory (relative to inode fds and /proc/self/fd).
  'openat', 'openat2', 'close', 'dup', 'newfstatat', 'fstat', 'statx', 'fstatfs', 'statfs', 'getdents64', 'lseek',
  'read', 'readv', 'pread64', 'preadv', 'preadv2', 'write', 'writev', 'pwrite64', 'pwritev', 'pwritev2',
  'fsync', 'fdatasync', 'syncfs', 'fallocate', 'ftruncate', 'copy_file_range',
  'mkdirat', 'mknodat', 'symlinkat', 'linkat', 'unlinkat', 'renameat', 'renameat2', 'readlinkat',
  'fchmod', 'fchmodat', 'fchmodat2', 'fchown', 'fchownat', 'utimensat', 'faccessat', 'faccessat2',
  'getxattr', 'lgetxattr', 'fgetxattr', 'setxattr', 'lsetxattr', 'fsetxattr', 'listxattr', 'llistxattr',
  'flistxattr', 'removexattr', 'lremovexattr', 'fremovexattr', 'fcntl', 'flock',
  // xattrs of symlinks and special files: through their /proc/self/fd link, from the thread's own cwd.
  'fchdir',
  'name_to_handle_at', 'open_by_handle_at',
  // The O_PATH fd of a file CREATE made (openPathOfRaw). Its OPEN_TREE_CLONE form needs CAP_SYS_ADMIN, which this
  // thread does not keep, and a detached tree could be attached nowhere (no move_mount here).
  'open_tree',
  // The caller's credentials (and with --posix-acl its umask) around creating calls (per thread).
  'umask', 'setresuid', 'setresgid', 'setgroups', 'getuid', 'geteuid', 'getgid', 'getegid',
  // --killpriv-v2: CAP_FSETID leaves the effective set around an unprivileged guest caller's write or truncate.
  'capget', 'capset',
  // Rings, kicks and interrupts: epoll, eventfds, io_uring for spread READs.
  'epoll_wait', 'epoll_pwait', 'epoll_pwait2', 'epoll_ctl', 'io_uring_enter', 'sched_yield',
  // The retry timer of blocking locks held elsewhere (LockWaits).
  'timerfd_settime',
  // Guest memory tables (regions mapped and unmapped as the front-end changes them) and V8's heap
  // (pkey_mprotect where the CPU has protection keys, which this machine's lacks).
  'mmap', 'munmap', 'mremap', 'mprotect', 'pkey_mprotect', 'madvise', 'brk',
  // Logging (--syslog sends datagrams to /dev/log).
  'sendto', 'sendmsg',
  // Threads, time and signals as Node uses them on a worker thread, and its exit.
  'futex', 'futex_wait', 'futex_wake', 'clock_gettime', 'clock_getres', 'gettimeofday', 'clock_nanosleep', 'nanosleep',
  'getpid', 'gettid', 'getcpu', 'tgkill', 'sched_getaffinity', 'getrandom', 'getrusage', 'prlimit64',
  'rt_sigprocmask', 'rt_sigreturn', 'sigaltstack', 'restart_syscall', 'exit', 'exit_group',
];
