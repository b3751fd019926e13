// `npm run demo`: boots the Debian demo guest under kumo with our three vhost-user backends
// (kumo-vhost-user-blk, kumo-virtiofsd, kumo-vhost-user-net). The guest reads and writes its disk,
// mounts the virtio-fs share and pings the host through the TAP; the host then checks what the
// guest left behind. On a software KVM (kvm_pvm) the whole thing runs inside the nested lab.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureImage } from '../vmm/image/index.js';
import { runInLab } from '../vmm/lab/index.js';
import { shQuote } from '../vmm/lab/job.js';
import { onCleanup, spawnOwned } from '../vmm/lab/processes.js';
import { watchAncestors } from '../vmm/lab/ancestors.js';
import { setLogLevel } from '../protocol/log.js';
import { errorLine } from '../protocol/errors.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = (name: string) => join(root, 'bin', `${name}.js`);
const DISK_HEADER = 'KUMO-DISK hello-from-the-host';
const GUEST_MARK = 'guest-was-here';

/** A stock kernel boots directly only on a hardware-backed /dev/kvm, not on kvm_pvm. */
export function hardwareKvm(): boolean {
  return existsSync('/dev/kvm') && !existsSync('/sys/module/kvm_pvm') &&
    (existsSync('/sys/module/kvm_intel') || existsSync('/sys/module/kvm_amd'));
}

/** A child that dies with the demo, however the demo ends (setpriv --pdeathsig, and the exit and signal hooks). */
function start(name: string, args: string[], out: (s: string) => void): ChildProcess {
  const p = spawnOwned(process.execPath, [bin(name), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  p.stdout!.on('data', (d: Buffer) => out(d.toString()));
  p.stderr!.on('data', (d: Buffer) => out(d.toString()));
  return p;
}

/** Waits for a backend's socket; fails at once if the backend exits first. */
async function waitForSocket(name: string, path: string, backend: ChildProcess, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!existsSync(path)) {
    if (backend.exitCode !== null || backend.signalCode !== null) {
      throw new Error(`${name} exited (${backend.exitCode ?? backend.signalCode}) before listening on ${path}`);
    }
    if (Date.now() > until) throw new Error(`${path} did not appear within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function readAt(file: string, offset: number, len: number): string {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, offset);
    return b.toString('latin1');
  } finally {
    closeSync(fd);
  }
}

/** Runs the demo on this machine's /dev/kvm; returns the process exit code. */
export async function runDemo(): Promise<number> {
  const image = await ensureImage();
  // In the lab the host made it (and removes it, also when the run is interrupted and this process never gets to).
  const dir = process.env.KUMO_DEMO_DIR ?? mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : '/tmp', 'kumo-demo-'));
  const forget = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const disk = join(dir, 'disk.img');
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(share + '/hello.txt', 'hello from the host share\n');
  const img = Buffer.alloc(64 << 20);
  img.write(DISK_HEADER, 0);
  writeFileSync(disk, img);
  const sock = (n: string) => join(dir, `${n}.sock`);
  const logs: Record<string, string> = { blk: '', fs: '', net: '' };
  const backendLog = (tag: string) => (s: string) => {
    logs[tag] = (logs[tag] + s).slice(-4000);
    if (process.env.KUMO_DEMO_VERBOSE) process.stderr.write(s.replace(/^/gm, `[${tag}] `));
  };

  const backends = [
    start('kumo-vhost-user-blk', ['--block-backend', `path=${disk},socket=${sock('blk')},num_queues=1`], backendLog('blk')),
    start('kumo-virtiofsd', [`--socket-path=${sock('fs')}`, `--shared-dir=${share}`, '--sandbox=chroot'], backendLog('fs')),
    start('kumo-vhost-user-net', ['--net-backend', `ip=192.168.249.1,mask=255.255.255.0,socket=${sock('net')},num_queues=2`], backendLog('net')),
  ];
  let guestOut = '';
  let passed = false;
  try {
    // Generous: in the lab's emulated L1 each backend needs tens of seconds just to start node.
    for (const [i, n] of ['blk', 'fs', 'net'].entries()) await waitForSocket(`the ${n} back-end`, sock(n), backends[i], 240_000);
    const kumo = spawnOwned(process.execPath, [
      bin('kumo'), '--kernel', image.vmlinux, '--initramfs', image.initramfs,
      '--cmdline', 'console=ttyS0 quiet kumo.script=demo',
      '--cpus', 'boot=1', '--memory', 'size=512M,shared=on',
      '--disk', `vhost_user=on,socket=${sock('blk')}`,
      '--fs', `tag=shared,socket=${sock('fs')}`,
      '--net', `vhost_user=on,socket=${sock('net')},num_queues=2`,
      '--serial', 'tty', '--console', 'off',
    ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KUMO_LOG: process.env.KUMO_DEMO_VERBOSE ? 'info' : 'warn' } });
    kumo.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
    kumo.stdout!.on('data', (d: Buffer) => {
      guestOut += d.toString();
      process.stdout.write(d);
    });
    const code = await new Promise<number>((r) => kumo.on('exit', (c) => r(c ?? 1)));
    const checks: [string, boolean][] = [
      ['kumo exited 0 after the guest powered off', code === 0],
      ['guest read the host-written disk header', guestOut.includes('KUMO-DEMO-BLK sectors=131072 header=KUMO-DISK hello-from-the-host')],
      ['guest write reached the image file', readAt(disk, 2048 * 512, GUEST_MARK.length) === GUEST_MARK],
      ['guest read the virtio-fs share', guestOut.includes('KUMO-DEMO-FS hello from the host share')],
      ['guest file appeared in the share', existsSync(join(share, 'from-guest.txt')) &&
        readFileSync(join(share, 'from-guest.txt'), 'utf8') === 'written by the guest\n'],
      ['guest pinged the host through the TAP', /KUMO-DEMO-NET 3 packets received/.test(guestOut)],
    ];
    console.log('\nkumo demo:');
    for (const [what, ok] of checks) console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${what}`);
    passed = checks.every(([, ok]) => ok);
    return passed ? 0 : 1;
  } finally {
    if (!passed) {
      for (const [tag, text] of Object.entries(logs)) console.log(`--- ${tag} backend output (tail) ---\n${text}`);
    }
    for (const b of backends) b.kill('SIGKILL');
    forget();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** L1's own kernel messages ("[   39.2] kvm [190]: ... Unhandled WRMSR") read like the demo failing: shown only when verbose. */
let partial = '';
function showLines(s: string): void {
  const lines = (partial + s).split('\n');
  partial = lines.pop() ?? '';
  for (const l of lines) if (process.env.KUMO_DEMO_VERBOSE || !/^\[\s*\d+\.\d+\] /.test(l)) process.stdout.write(`${l}\n`);
}

const USAGE = `usage: npm run demo   (as root)
  Boots the Debian demo guest under kumo with kumo-vhost-user-blk, kumo-virtiofsd and kumo-vhost-user-net: the guest
  reads and writes its disk, mounts the share and pings the host through a TAP, powers off, and the host checks what
  it left. Where /dev/kvm is not hardware-backed (kvm_pvm) it all runs inside the nested lab.
  KUMO_DEMO_VERBOSE=1 shows the components' logs.`;

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => a !== '--');
  if (args.includes('-h') || args.includes('--help')) {
    console.log(USAGE);
    return;
  }
  if (args.length > 0) throw new Error(`unknown argument ${args[0]} (--help: what the demo does)`);
  // TAP devices, and the lab's virtiofsd sharing / : say so now, not after building the image.
  if (process.getuid?.() !== 0) throw new Error('the demo needs root (TAP devices, and the nested lab where /dev/kvm is not hardware-backed): run it with sudo');
  // Progress is the guest's lines and the checks; the components' JSON logs only with KUMO_DEMO_VERBOSE.
  if (!process.env.KUMO_DEMO_VERBOSE && !process.env.KUMO_LOG) setLogLevel('warn');
  // Through `npm run demo` our ancestors are tsx's launcher, sh and npm: if one of them is killed, stop (and clean up).
  if (process.env.KUMO_IN_LAB !== '1') {
    watchAncestors(3, () => {
      process.stderr.write('kumo demo: the process that started us is gone; stopping\n');
      process.exit(143);
    });
  }
  if (process.env.KUMO_IN_LAB === '1' || hardwareKvm()) {
    process.exitCode = await runDemo();
    return;
  }
  console.log('kumo demo: /dev/kvm here is not hardware-backed; running the demo inside the nested lab (L1)');
  await ensureImage();
  // L1's /tmp is this host's: the host owns the demo's directory, so an interrupted run leaves nothing behind.
  const dir = mkdtempSync(join('/tmp', 'kumo-demo-'));
  const forget = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  try {
    const r = await runInLab([join(root, 'node_modules/.bin/tsx'), join(root, 'scripts/demo.ts')].map(shQuote).join(' '), {
      timeoutMs: 15 * 60_000,
      env: { KUMO_DEMO_DIR: dir },
      onOutput: showLines,
    });
    showLines('\n');
    console.log(`lab: L1 booted in ${r.l1BootS.toFixed(1)} s, whole run ${r.wallS.toFixed(1)} s`);
    process.exitCode = r.code;
  } finally {
    forget();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main().catch((e: unknown) => {
    process.stderr.write(`kumo demo: ${errorLine(e)}\n`);
    process.exitCode = 1;
  });
}
