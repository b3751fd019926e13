// kumo boots the stock Debian kernel to userspace in the nested lab: PVH vmlinux with the
// built-in virtio-rng and virtio-console checked from inside the guest, the bzImage, a 2-vCPU
// boot (known flaky in the lab: retried once and reported), the demo guest on our three
// vhost-user backends, and a disk back-end killed and restarted under a writing guest (kumo reconnects). One lab boot runs them all, in sequence, to keep CI time down; the 2-vCPU
// boot goes last, since it sometimes hangs L1 itself: the lab's timeout then ends the run and the
// others are judged on what they printed before it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureImage, type ImagePaths } from '../../vmm/image/index.js';
import { runInLab } from '../../vmm/lab/lab.js';
import { LabTimeoutError } from '../../vmm/lab/errors.js';
import { whyNoLab } from './skip.js';
import { shQuote } from '../../vmm/lab/job.js';

const skip = whyNoLab('test/lab/kumo-boot.test.ts');

const root = path.resolve(import.meta.dirname, '../..');

function bootLine(name: string, img: ImagePaths, kernel: string, cmdline: string, extra: string[]): string {
  const argv = [
    'node', `${root}/bin/kumo.js`, '--kernel', kernel, '--initramfs', img.initramfs,
    '--cmdline', `console=ttyS0 quiet ${cmdline}`, '--memory', 'size=512M', '--serial', 'tty', ...extra,
  ].map(shQuote).join(' ');
  return `echo "=== ${name} start"; timeout 300 ${argv}; echo "=== ${name} exit=$?"`;
}

/** The lines printed between "=== name start" and "=== name exit=N" (the last such block). */
function section(out: string, name: string): { text: string; exit: number | null } {
  const start = out.lastIndexOf(`=== ${name} start`);
  if (start < 0) return { text: '', exit: null };
  const rest = out.slice(start);
  const m = rest.match(new RegExp(`=== ${name} exit=(\\d+)`));
  return { text: m ? rest.slice(0, m.index) : rest, exit: m ? Number(m[1]) : null };
}

describe.skipIf(skip !== null)('kumo boots Debian in the lab', () => {
  let r: { output: string; hung: boolean };

  beforeAll(async () => {
    const img = await ensureImage();
    const smp = bootLine('smp2', img, img.vmlinux, 'kumo.cmd=echo KUMO-CPUS $(grep -c ^processor /proc/cpuinfo)',
      ['--cpus', 'boot=2', '--console', 'off']);
    const jobDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-boot-'));
    const jobFile = path.join(jobDir, 'job.sh');
    fs.writeFileSync(jobFile, [
      bootLine('pvh', img, img.vmlinux, 'kumo.script=devices', ['--cpus', 'boot=1', '--console', 'tty']),
      bootLine('bzimage', img, img.bzImage, 'kumo.script=ready', ['--cpus', 'boot=1', '--console', 'off']),
      `echo "=== demo start"; ${root}/node_modules/.bin/tsx ${root}/scripts/demo.ts; echo "=== demo exit=$?"`,
      `echo "=== reconnect start"; sh ${shQuote(path.join(root, 'test/lab/fixtures/blk-reconnect.sh'))} ${[root, img.vmlinux, img.initramfs].map(shQuote).join(' ')}; echo "=== reconnect exit=$?"`,
      // 2 vCPUs in the lab hang or panic L1 some of the time (nested-lab.md): one retry.
      `out=$( ${smp} 2>&1 ); echo "$out"; case "$out" in *"KUMO-RESULT rc=0"*) ;; *) echo "=== smp2 retry"; ${smp} ;; esac`,
    ].join('\n') + '\n');
    // A normal run takes about 2 minutes; each boot is capped at 300 s inside L1.
    try {
      const done = await runInLab(`sh ${jobFile}`, { timeoutMs: 15 * 60_000 });
      console.log(`lab: L1 up in ${done.l1BootS.toFixed(1)} s, whole run ${done.wallS.toFixed(1)} s`);
      r = { output: done.output, hung: false };
    } catch (e) {
      if (!(e instanceof LabTimeoutError)) throw e;
      console.log('lab: L1 stopped answering; judging each boot on what it printed before');
      r = { output: e.output, hung: true };
    } finally {
      fs.rmSync(jobDir, { recursive: true, force: true });
    }
  }, 16 * 60_000);

  it('boots the PVH vmlinux; rng and console are bound and work; S5 ends kumo with 0', () => {
    const s = section(r.output, 'pvh');
    expect(s.text).toContain('KUMO-READY');
    expect(s.text).toMatch(/KUMO-PCI \S+ 0x1af4:0x1044 \S+ driver=virtio-pci/);
    expect(s.text).toMatch(/KUMO-PCI \S+ 0x1af4:0x1043 \S+ driver=virtio-pci/);
    expect(s.text).toMatch(/KUMO-VIRTIO \S+ device=0x0004 driver=virtio_rng/);
    expect(s.text).toMatch(/KUMO-VIRTIO \S+ device=0x0003 driver=virtio_console/);
    expect(s.text).toMatch(/KUMO-HWRNG [0-9a-f]{32} /);
    expect(s.text).toContain('KUMO-HVC-ECHO hello-from-guest');
    expect(s.text).toContain('KUMO-RESULT rc=0');
    expect(s.exit).toBe(0);
  });

  it('boots the bzImage to userspace', () => {
    const s = section(r.output, 'bzimage');
    expect(s.text).toContain('KUMO-READY');
    expect(s.text).toContain('KUMO-RESULT rc=0');
    expect(s.exit).toBe(0);
  });

  it('tries a 2-vCPU boot (retried once; reported, flaky in the lab)', () => {
    const s = section(r.output, 'smp2');
    const retried = r.output.includes('=== smp2 retry');
    const booted = s.text.includes('KUMO-RESULT rc=0') && s.exit === 0;
    const how = booted ? 'booted' : r.hung ? 'hung L1' : 'failed';
    console.log(`2-vCPU boot in the lab: ${how}${retried ? ' after a retry' : ''}`);
    // Whenever the guest reached userspace, the AP must have come up through INIT/SIPI.
    if (booted) expect(s.text).toContain('KUMO-CPUS 2');
    // It ran: it ended (either way), or L1 stopped during it, after every other boot had finished.
    expect(r.output).toContain('=== smp2 start');
    if (!r.hung) expect(s.exit).not.toBeNull();
  });

  it('runs the demo guest on our blk, fs and net backends', () => {
    const s = section(r.output, 'demo');
    expect(s.text).toContain('ok   guest read the host-written disk header');
    expect(s.text).toContain('ok   guest write reached the image file');
    expect(s.text).toContain('ok   guest read the virtio-fs share');
    expect(s.text).toContain('ok   guest file appeared in the share');
    expect(s.text).toContain('ok   guest pinged the host through the TAP');
    expect(s.exit).toBe(0);
  });

  it('reconnects to a disk back-end killed and restarted under the writing guest; every write completes', () => {
    const s = section(r.output, 'reconnect');
    expect(s.text).toContain('back-end killed');
    expect(s.text).toMatch(/reconnected to the vhost-user back-end/);
    expect(s.text).toContain('GUEST-DONE');
    expect(s.text).not.toContain('DD-FAIL');
    expect(s.text).toContain('IO-ERRORS 0');
    expect(s.text).toContain('KUMO-RESULT rc=0');
    expect(s.text).toContain('kumo exit=0');
    expect(s.exit).toBe(0);
  });
});
