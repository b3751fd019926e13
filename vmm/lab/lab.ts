import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { logger } from '../../protocol/log.js';
import { ensureImage, type KernelChoice } from '../image/build.js';
import { withLockFile } from '../image/lock.js';
import { LabConsole } from './console.js';
import { LabError, LabTimeoutError } from './errors.js';
import { jobScript, labEnv } from './job.js';
import { onCleanup, spawnOwned, stop } from './processes.js';

const log = logger('lab');
export const VIRTIOFSD = process.env.KUMO_LAB_VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';
export const QEMU = process.env.KUMO_LAB_QEMU ?? 'qemu-system-x86_64';

export interface LabOptions {
  /** Whole run: L1 boot + command + power-off. Default 10 minutes. */
  timeoutMs?: number;
  /** L1 memory (default 2048) and vCPUs (default 2). */
  memMiB?: number;
  cpus?: number;
  /** Added to the default environment (PATH, HOME, TERM, KUMO_*, ...). */
  env?: Record<string, string>;
  /** Working directory inside L1 (the same host path); default process.cwd(). */
  cwd?: string;
  /** How long to wait for another lab run on this machine to finish (default 30 min). */
  lockWaitMs?: number;
  /** Called with the command's output as it arrives. */
  onOutput?: (text: string) => void;
  /**
   * The daemon that serves L1's root (default QEMU's C virtiofsd); kumo-virtiofsd takes the same
   * arguments. A running guest then reads every file it touches through that daemon.
   */
  virtiofsd?: string;
  /** vhost-user-blk back-end sockets, given to L1 in order as 2-queue vhost-user-blk-pci disks (/dev/vda, ...). */
  blkSockets?: string[];
  /** Further virtio-fs shares (vhost-user-fs-pci) on back-end sockets, mounted in L1 with `mount -t virtiofs TAG DIR`. */
  fsShares?: { socket: string; tag: string }[];
  /** vhost-user-net back-end sockets, given to L1 in order as 2-queue-pair virtio-net NICs (eth0, ...). */
  netSockets?: string[];
  /** L1's kernel: bookworm's (default) or bookworm-backports' newer one. */
  kernel?: KernelChoice;
}

/**
 * L1's CPU: an AMD model with SVM, so that L1 has KVM. The backports kernel (6.12) gets it without CMPXCHG16B:
 * under QEMU 7.2's multi-threaded TCG its SLUB fast path (this_cpu cmpxchg16b) corrupts slab state, and L1
 * panicked in 5 of 5 boots with it, 0 of 5 without (2026-11-23); bookworm's 6.1 boots either way.
 */
function l1CpuModel(kernel: KernelChoice): string {
  return kernel === 'backports' ? 'EPYC,+svm,-cx16' : 'EPYC,+svm';
}

/** QEMU arguments attaching vhost-user back-ends to L1 besides its root share. */
function backendArgs(opts: LabOptions): string[] {
  const args: string[] = [];
  (opts.fsShares ?? []).forEach((f, i) => {
    args.push('-chardev', `socket,id=fs${i},path=${f.socket}`, '-device', `vhost-user-fs-pci,chardev=fs${i},tag=${f.tag}`);
  });
  (opts.blkSockets ?? []).forEach((s, i) => {
    args.push('-chardev', `socket,id=blk${i},path=${s},reconnect=1`, '-device', `vhost-user-blk-pci,chardev=blk${i},num-queues=2`);
  });
  // vectors=0 (INTx): QEMU 7.2 under TCG segfaults in vhost_net_start (msix_set_vector_notifiers) with MSI-X,
  // whatever the vhost-user back-end (DPDK's vhost PMD too).
  (opts.netSockets ?? []).forEach((s, i) => {
    args.push('-chardev', `socket,id=net${i},path=${s}`, '-netdev', `vhost-user,id=nd${i},chardev=net${i},queues=2`,
      '-device', `virtio-net-pci,netdev=nd${i},mq=on,vectors=0`);
  });
  return args;
}

export interface LabResult {
  code: number;
  /** The command's stdout+stderr (serial console, CRs removed). */
  output: string;
  /** L1 console lines before the command started (kernel messages, module warnings). */
  bootLog: string[];
  /** Seconds: L1's uptime when the command started, and wall time of the whole run. */
  l1BootS: number;
  wallS: number;
}

async function waitForSocket(file: string, until: number, failed: () => string | null): Promise<void> {
  while (!fs.existsSync(file)) {
    const why = failed();
    if (why) throw new LabError('virtiofsd did not start', { why });
    if (Date.now() > until) throw new LabTimeoutError('virtiofsd socket did not appear', { file });
    await sleep(20);
  }
}

/**
 * Runs `cmd` (a sh command line) inside L1: QEMU TCG with an emulated AMD SVM CPU whose Linux loads
 * kvm_amd (nested paging), with the host's root shared read-write over virtio-fs and chrooted into,
 * so /dev/kvm is a hardware-style KVM and everything installed on the host is there.
 */
export async function runInLab(cmd: string, opts: LabOptions = {}): Promise<LabResult> {
  if (process.env.KUMO_IN_LAB === '1') throw new LabError('already inside the lab (L1): a lab in the lab is not supported');
  if (process.env.KUMO_LAB_PARALLEL === '1') return runLab(cmd, opts);
  // Two TCG labs on a 2-core machine starve each other into timeouts: one at a time per machine, whichever checkout
  // or user starts it (the lab needs root, which /run takes).
  const lock = path.join(fs.existsSync('/run') ? '/run' : os.tmpdir(), 'kumo-lab.lock');
  return withLockFile(lock, opts.lockWaitMs ?? 30 * 60_000, () => runLab(cmd, opts), 'the lab (another one runs on this machine)');
}

async function runLab(cmd: string, opts: LabOptions): Promise<LabResult> {
  const t0 = Date.now();
  const timeoutMs = opts.timeoutMs ?? 600_000;
  const mem = opts.memMiB ?? 2048;
  const cpus = opts.cpus ?? 2;
  if (process.getuid?.() !== 0) throw new LabError('the lab needs root (virtiofsd shares / as root)');
  const virtiofsd = opts.virtiofsd ?? VIRTIOFSD;
  if (!fs.existsSync(virtiofsd)) throw new LabError('virtiofsd not found (apt-get install qemu-system-x86)', { path: virtiofsd });
  const img = await ensureImage(opts.kernel);

  // The job path travels on L1's kernel command line, which splits at white space.
  if (/\s/.test(os.tmpdir())) throw new LabError('the temp dir path has white space', { tmpdir: os.tmpdir() });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-lab-'));
  const removeDir = (): void => fs.rmSync(dir, { recursive: true, force: true });
  const unregister = onCleanup(removeDir);
  const sock = path.join(dir, 'fs.sock');
  const job = path.join(dir, 'job.sh');
  fs.writeFileSync(job, jobScript(cmd, opts.cwd ?? process.cwd(), labEnv(opts.env)), { mode: 0o755 });

  const vfsErr: string[] = [];
  const vfs = spawnOwned(virtiofsd, [`--socket-path=${sock}`, '-o', 'source=/', '-o', 'cache=always', '-o', 'sandbox=chroot'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  vfs.stderr?.on('data', (d: Buffer) => vfsErr.push(d.toString()));
  let vfsSpawnError: string | null = null;
  vfs.on('error', (e) => (vfsSpawnError = e.message));
  let qemu: ReturnType<typeof spawnOwned> | null = null;
  let timer: NodeJS.Timeout | undefined;
  try {
    await waitForSocket(sock, t0 + 30_000, () =>
      vfsSpawnError ?? (vfs.exitCode !== null ? vfsErr.join('').slice(-2000) || `exit ${vfs.exitCode}` : null));
    const append = `console=ttyS0 panic=-1 quiet transparent_hugepage=never kumo.lab=${job}`;
    const args = [
      '-accel', 'tcg,thread=multi', '-cpu', l1CpuModel(opts.kernel ?? 'stable'), '-m', String(mem), '-smp', String(cpus),
      '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
      '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`, '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c0,path=${sock}`, '-device', 'vhost-user-fs-pci,chardev=c0,tag=hostroot',
      ...backendArgs(opts),
      '-kernel', img.bzImage, '-initrd', img.labInitramfs, '-append', append,
    ];
    log.debug({ args }, 'starting L1');
    const q = spawnOwned(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    qemu = q;
    const qErr: string[] = [];
    q.stderr?.on('data', (d: Buffer) => qErr.push(d.toString()));
    q.on('error', (e) => qErr.push(`spawn: ${e.message}`));

    let output = '';
    let l1BootS = NaN;
    let code: number | null = null;
    const errors: string[] = [];
    const con = new LabConsole({
      onOutput: (t) => {
        output += t;
        opts.onOutput?.(t);
      },
      onStart: (s) => {
        l1BootS = s;
        log.debug({ l1BootS: s }, 'L1 started the command');
      },
      onExit: (c) => {
        code = c;
      },
      onError: (m) => errors.push(m),
    });
    q.stdout?.setEncoding('utf8');
    q.stdout?.on('data', (d: string) => con.push(d));

    // 'close', not 'exit': the last console bytes (the exit marker) may still be in the pipe at exit.
    const exited = new Promise<void>((resolve) => q.once('close', () => resolve()));
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), Math.max(0, timeoutMs - (Date.now() - t0)));
    });
    const how = await Promise.race([exited.then(() => 'exit' as const), timedOut]);
    if (how === 'timeout') {
      const e = new LabTimeoutError('lab command timed out', { cmd, timeoutMs, pids: { qemu: q.pid, virtiofsd: vfs.pid }, output: output.slice(-4000), bootLog: con.bootLog.slice(-40) });
      e.output = output;
      throw e;
    }
    if (code === null) {
      throw new LabError('L1 stopped without reporting an exit code', {
        cmd, qemuExit: q.exitCode, qemuSignal: q.signalCode, errors, qemuStderr: qErr.join('').slice(-2000),
        virtiofsdStderr: vfsErr.join('').slice(-2000), bootLog: con.bootLog.slice(-40), output: output.slice(-4000),
      });
    }
    const result: LabResult = { code, output, bootLog: con.bootLog, l1BootS, wallS: (Date.now() - t0) / 1000 };
    log.info({ code, l1BootS, wallS: result.wallS }, 'lab command finished');
    return result;
  } finally {
    clearTimeout(timer);
    if (qemu) await stop(qemu);
    await stop(vfs);
    unregister();
    removeDir();
  }
}
