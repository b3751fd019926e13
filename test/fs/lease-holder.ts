import { spawn } from 'node:child_process';

/**
 * A host process holding a lease (write by default) on `path` (as Samba or knfsd do) for 10 s; resolves once it holds
 * it. `releaseMs`: it gives the lease up that long after the kernel asks it to (null: it never does, and the kernel
 * takes it after lease-break-time). `cleanups` gets what kills it.
 */
export async function leaseHolder(path: string, cleanups: (() => void)[], kind = 'F_WRLCK', releaseMs: number | null = null): Promise<void> {
  const holder = spawn('python3', ['-c', [
    'import os, fcntl, signal, sys, time',
    releaseMs === null
      ? 'signal.signal(signal.SIGIO, signal.SIG_IGN)'
      : `signal.signal(signal.SIGIO, lambda s, f: (time.sleep(${releaseMs / 1000}), fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)))`,
    'fd = os.open(sys.argv[1], os.O_RDONLY)',
    `fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.${kind})`,
    "print('leased', flush=True)",
    'time.sleep(10)',
  ].join('\n'), path], { stdio: ['ignore', 'pipe', 'inherit'] });
  cleanups.push(() => holder.kill('SIGKILL'));
  await new Promise((resolve, reject) => {
    holder.stdout?.once('data', resolve);
    holder.once('exit', (code) => reject(new Error(`lease holder exited ${code}`)));
  });
}
