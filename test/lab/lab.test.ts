// One lab boot for all the checks: command exit code and output, /dev/kvm with nested paging in L1,
// node on the shared host root, and QEMU booting our L2 image (PVH vmlinux, microvm) to KUMO-READY.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureImage } from '../../vmm/image/index.js';
import { LabTimeoutError } from '../../vmm/lab/errors.js';
import { QEMU, runInLab, type LabResult } from '../../vmm/lab/lab.js';
import { whyNoLab } from './skip.js';

const skip = whyNoLab('test/lab/lab.test.ts');

describe.skipIf(skip !== null)('nested lab', () => {
  let dir: string;
  let r: LabResult;

  beforeAll(async () => {
    const img = await ensureImage();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-labtest-'));
    const hvc = path.join(dir, 'hvc.out');
    const script = [
      'echo hi',
      'test -c /dev/kvm && echo KVM-DEV ok',
      'echo NPT=$(cat /sys/module/kvm_amd/parameters/npt) NESTED=$(cat /sys/module/kvm_amd/parameters/nested)',
      'echo ENV=$LABTEST_VAR CWD=$(pwd)',
      `node -e "console.log('NODE-KVM', require('fs').existsSync('/dev/kvm'))"`,
      // vhost-user backends put their sockets under the host's /tmp, which L1 sees through virtio-fs.
      `node -e "const n=require('net');const s=n.createServer(c=>c.pipe(c)).listen('${dir}/u.sock',()=>{const c=n.connect('${dir}/u.sock',()=>c.write('ping'));c.on('data',d=>{console.log('UNIX-SOCKET',String(d));c.end();s.close()})})"`,
      `timeout 150 ${QEMU} -enable-kvm -M microvm -cpu host -smp 1 -m 256 -nodefaults -no-user-config -display none` +
        ` -serial stdio -no-reboot -device virtio-rng-device -device virtio-serial-device` +
        ` -chardev file,id=h,path=${hvc} -device virtconsole,chardev=h` +
        ` -kernel ${img.vmlinux} -initrd ${img.initramfs} -append 'console=ttyS0 quiet panic=-1 kumo.script=devices'`,
      'echo L2-QEMU-RC=$?',
      'exit 3',
    ].join('\n');
    fs.writeFileSync(path.join(dir, 'check.sh'), script + '\n');
    r = await runInLab(`sh ${path.join(dir, 'check.sh')}`, { timeoutMs: 400_000, cwd: dir, env: { LABTEST_VAR: 'x y' } });
  }, 450_000);

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('returns the command exit code and its output, in the caller cwd and env', () => {
    expect(r.code).toBe(3);
    expect(r.output).toMatch(/^hi$/m);
    expect(r.output).toContain(`ENV=x y CWD=${dir}`);
  });

  it('gives L1 a /dev/kvm from kvm_amd with nested paging, node, and unix sockets on the shared /tmp', () => {
    expect(r.output).toContain('KVM-DEV ok');
    expect(r.output).toMatch(/NPT=Y NESTED=(1|Y)/);
    expect(r.output).toContain('NODE-KVM true');
    expect(r.output).toContain('UNIX-SOCKET ping');
  });

  it('boots our PVH vmlinux + initramfs under QEMU microvm in L1 to KUMO-READY, with virtio-rng and hvc0', () => {
    expect(r.output).toMatch(/KUMO-READY uptime=[\d.]+/);
    expect(r.output).toMatch(/KUMO-VIRTIO virtio\d device=0x0004 driver=virtio_rng/);
    expect(r.output).toMatch(/KUMO-HWRNG [0-9a-f]{32} /);
    expect(r.output).toContain('KUMO-HVC ok');
    expect(r.output).toContain('KUMO-RESULT rc=0');
    expect(r.output).toContain('L2-QEMU-RC=0');
    expect(fs.readFileSync(path.join(dir, 'hvc.out'), 'utf8')).toContain('KUMO-HVC-ECHO hello-from-guest');
  });

  it('enforces the timeout and leaves no qemu or virtiofsd behind', async () => {
    const err = await runInLab('sleep 600', { timeoutMs: 6000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LabTimeoutError);
    const pids = (err as LabTimeoutError).context.pids as { qemu: number; virtiofsd: number };
    for (const pid of [pids.qemu, pids.virtiofsd]) {
      expect(pid).toBeGreaterThan(0);
      expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    }
  }, 60_000);
});
