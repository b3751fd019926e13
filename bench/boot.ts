// Boot-to-userspace: time from launching a VMM process to the guest's KUMO-READY marker (and the
// guest's own uptime then), inside the nested lab, median of RUNS. All runs share one lab session.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureImage, type ImagePaths } from '../vmm/image/index.js';
import { REPO_ROOT } from '../vmm/image/paths.js';
import type { ProbeResult, ProbeSpec, ProbeVariant } from '../vmm/lab/boot-probe.js';
import { runInLab } from '../vmm/lab/lab.js';
import type { BenchTable } from './types.js';
import { buildAndPin } from './build.js';

const RUNS = Number(process.env.KUMO_BENCH_BOOT_RUNS ?? 5);
export const GUEST_CMDLINE = 'console=ttyS0 quiet panic=-1 kumo.script=ready';

/** QEMU's microvm booting the PVH vmlinux directly, 1 vCPU, 256 MiB (the reference). */
export function qemuCommand(p: ImagePaths): string[] {
  return [
    'qemu-system-x86_64', '-enable-kvm', '-M', 'microvm', '-cpu', 'host', '-smp', '1', '-m', '256',
    '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-kernel', p.vmlinux, '-initrd', p.initramfs, '-append', GUEST_CMDLINE,
  ];
}

/**
 * HOOK for the kumo VMM: the argv that boots the same guest with bin/kumo.js (Cloud-Hypervisor
 * syntax). Until kumo boots a kernel this column shows n/a with the error.
 */
export function kumoCommand(p: ImagePaths): string[] {
  return [
    process.execPath, path.join(REPO_ROOT, 'bin', 'kumo.js'), '--kernel', p.vmlinux, '--initramfs', p.initramfs,
    '--cmdline', GUEST_CMDLINE, '--cpus', 'boot=1', '--memory', 'size=256M', '--serial', 'tty', '--console', 'off',
  ];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const PROBE = /^KUMO-PROBE (\{.*\})$/;

export async function run(): Promise<BenchTable[]> {
  const img = await ensureImage();
  const kumoRuns = buildAndPin();
  const variants: ProbeVariant[] = [
    { name: 'qemu microvm (PVH)', argv: qemuCommand(img) },
    { name: 'kumo', argv: kumoCommand(img) },
  ];
  const spec: ProbeSpec = { runs: RUNS, timeoutMs: 90_000, variants };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-bench-boot-'));
  const specFile = path.join(dir, 'spec.json');
  fs.writeFileSync(specFile, JSON.stringify(spec));
  let lab;
  try {
    lab = await runInLab(`node_modules/.bin/tsx vmm/lab/boot-probe.ts ${specFile}`, { timeoutMs: 900_000, cwd: REPO_ROOT });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const results: ProbeResult[] = lab.output.split('\n').map((l) => PROBE.exec(l.trim())).filter((m) => m !== null)
    .map((m) => JSON.parse(m[1]) as ProbeResult);

  const cell = (name: string, pick: (r: ProbeResult) => number | undefined, scale: number): string => {
    const rs = results.filter((r) => r.variant === name);
    const ok = rs.filter((r) => r.ok).map(pick).filter((x): x is number => x !== undefined);
    if (ok.length === 0) return `n/a (${rs.find((r) => r.error)?.error ?? 'no result'})`;
    return `${(median(ok) * scale).toFixed(2)}${ok.length < rs.length ? ` (${ok.length}/${rs.length} ok)` : ''}`;
  };
  const rows = [
    ['launch → KUMO-READY (s, median)', ...variants.map((v) => cell(v.name, (r) => r.readyMs, 1 / 1000))],
    ['guest uptime at KUMO-READY (s, median)', ...variants.map((v) => cell(v.name, (r) => r.guestUptimeS, 1))],
    ['launch → VMM exit after poweroff (s, median)', ...variants.map((v) => cell(v.name, (r) => r.exitMs, 1 / 1000))],
    ['runs', ...variants.map((v) => results.filter((r) => r.variant === v.name).length)],
  ];
  return [{
    title: 'Boot to userspace (Debian 6.1 cloud kernel, busybox initramfs, 1 vCPU, 256 MiB; nested lab L2)',
    columns: ['measure', ...variants.map((v) => v.name)],
    rows,
    notes: [
      `L1 (QEMU TCG + SVM, kvm_amd) booted to its init in ${lab.l1BootS.toFixed(1)} s; whole lab session ${lab.wallS.toFixed(1)} s`,
      'Inside the lab, L2 exits are emulated by TCG: absolute times are far above bare metal; compare columns, not figures.',
      `L1 userspace is TCG-emulated too: the kumo launch time includes node starting the VMM (${kumoRuns}) and its vCPU worker isolates; guest uptime is the like-for-like figure.`,
      `guest cmdline: ${GUEST_CMDLINE}`,
    ],
  }];
}
