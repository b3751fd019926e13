// `npm run bench [-- name ...]`: runs each benchmark module and prints its tables side by side with the peer.
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus, release, totalmem } from 'node:os';
import { formatTable } from './format.js';
import { HostCpuMeter } from './host-cpu.js';
import type { BenchModule } from './types.js';

const ALL = ['virtqueue', 'kumo-vu', 'blk', 'net', 'fs', 'vmm-platform', 'vmm', 'boot'];

/** Which host the figures come from: ratios between kumo and its peers move with the CPU count. */
function hostLine(): string {
  const hasKvm = existsSync('/dev/kvm');
  const pvm = hasKvm && existsSync('/sys/module/kvm_pvm');
  let virt = '';
  try {
    virt = /^flags\s*:.*\bhypervisor\b/m.test(readFileSync('/proc/cpuinfo', 'utf8')) ? ', virtualised' : '';
  } catch {
    /* no /proc */
  }
  const kvm = hasKvm ? (pvm ? 'kvm_pvm (software KVM)' : 'KVM') : 'none';
  return `host: ${availableParallelism()} CPUs (${cpus()[0]?.model ?? 'unknown'}${virt}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${release()}, /dev/kvm: ${kvm}`;
}

const USAGE = `usage: npm run bench [-- NAME ...]   (run-bench.sh [NAME ...] in the portable bundle)
  Prints each benchmark's table beside its peer's, measured in the same run. No NAME: all of them.
  NAMES: ${ALL.join(' ')}
  blk and fs run offline in the portable bundle (they need root); the others need more of the checkout
  (peers, the guest image, /dev/kvm).`;

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => a !== '--');
  if (args.includes('-h') || args.includes('--help')) {
    console.log(USAGE);
    return;
  }
  const bad = args.filter((a) => a.startsWith('-') || !ALL.includes(a));
  if (bad.length > 0) {
    process.stderr.write(`bench: unknown ${bad.length > 1 ? 'arguments' : 'argument'} ${bad.join(' ')}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const names = args.length ? args : ALL;
  let failed = 0;
  console.log(hostLine());
  for (const name of names) {
    const file = new URL(`./${name}.ts`, import.meta.url);
    console.log(`\n## ${name}`);
    try {
      const mod = (await import(file.href)) as BenchModule;
      const steal = new HostCpuMeter();
      for (const t of await mod.run()) console.log(`\n${formatTable(t)}`);
      const line = steal.line(name);
      if (line !== null) console.log(`\n${line}`);
    } catch (e) {
      failed++;
      console.log(`benchmark ${name} failed: ${(e as Error).stack ?? e}`);
    }
  }
  process.exitCode = failed ? 1 : 0;
}

await main();
