import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FuseClient, FuseReplyError } from '../../protocol/fuse/index.js';
import { VirtioFsTransport } from '../../vmm/kumo-vu/fs/transport.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const QEMU_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

/** kumo-virtiofsd or QEMU's virtiofsd on `share` (sandbox=chroot); `kumoArgs` / `qemuOptions` (each one -o) on top. */
export interface FsDaemon {
  who: 'kumo' | 'qemu';
  kumoArgs?: string[];
  qemuOptions?: string[];
  env?: Record<string, string>;
  /** A command kumo-virtiofsd runs under (e.g. setpriv to drop privileges). */
  wrap?: string[];
}

/**
 * Starts the daemon in `dir` (socket there, share at `share`) and connects a FuseClient (not yet INIT'ed) over
 * vhost-user with `depth` requests in flight. `cleanups` gets what closes the client, kills the daemon and
 * removes `dir`.
 */
export async function connectFs(d: FsDaemon, dir: string, share: string, cleanups: (() => void)[], depth = 1): Promise<FuseClient> {
  const sock = join(dir, 's.sock');
  const child: ChildProcess = d.who === 'kumo'
    ? spawn(d.wrap?.[0] ?? process.execPath, [...(d.wrap ? [...d.wrap.slice(1), process.execPath] : []), join(ROOT, 'bin/kumo-virtiofsd.js'),
      `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=chroot', ...(d.kumoArgs ?? [])],
      { stdio: 'ignore', env: { ...process.env, KUMO_LOG: 'warn', ...d.env } })
    : spawn(QEMU_VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${share}`, '-o', 'sandbox=chroot', ...(d.qemuOptions ?? []).flatMap((o) => ['-o', o])],
      { stdio: 'ignore' });
  let t: VirtioFsTransport | null = null;
  cleanups.push(() => {
    t?.close();
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  t = await VirtioFsTransport.connect(sock, 15_000, 256, depth);
  return new FuseClient(t);
}

/** 'ok', or the errno name of the FUSE error the request got. */
export async function errCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof FuseReplyError) return e.code;
    throw e;
  }
}
