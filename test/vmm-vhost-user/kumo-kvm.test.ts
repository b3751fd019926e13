// End to end on /dev/kvm: `kumo --disk vhost_user=on,...` attaches kumo-vhost-user-blk, and a tiny
// guest reads the disk's config space through PCI from a vCPU worker (answered from the shared spec).
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pvhElf, x86 } from '../vmm-kvm/fixtures/guests.js';
import { startProcess, stopProcess } from './harness.js';

const KUMO = new URL('../../bin/kumo.js', import.meta.url).pathname;
const KUMO_BLK = new URL('../../bin/kumo-vhost-user-blk.js', import.meta.url).pathname;
const hasKvm = existsSync('/dev/kvm');

const cf8 = (slot: number, reg: number) => [...x86.movDx(0xcf8), ...x86.movEax((0x8000_0000 | (slot << 11) | reg) >>> 0), ...x86.outDxEax()];
const cfc = (v: number) => [...x86.movDx(0xcfc), ...x86.movEax(v), ...x86.outDxEax()];

function runKumo(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [KUMO, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'info' } });
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => c.kill('SIGKILL'), 90_000);
    c.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stderr });
    });
  });
}

describe.skipIf(!hasKvm)('kumo with a vhost-user disk on /dev/kvm', () => {
  let dir = '';
  let child: ChildProcess | null = null;
  afterEach(async () => {
    await stopProcess(child);
    child = null;
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh dir with an image of `bytes` served by kumo-vhost-user-blk; the socket and a serial output path in it. */
  async function backedDisk(bytes: number, env: Record<string, string> = {}): Promise<{ sock: string; serial: string }> {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-kvm-'));
    const img = join(dir, 'disk.raw');
    const sock = join(dir, 'blk.sock');
    writeFileSync(img, Buffer.alloc(bytes));
    child = await startProcess(process.execPath, [KUMO_BLK, '--block-backend', `path=${img},socket=${sock}`], sock, env);
    return { sock, serial: join(dir, 'serial.out') };
  }

  /** kumo's arguments for a tiny guest running `code` with that disk (its kernel written to the dir). */
  function guestArgs(code: number[], sock: string, serial: string, diskExtra = ''): string[] {
    const kernel = join(dir, 'guest.elf');
    writeFileSync(kernel, pvhElf(code));
    return ['--kernel', kernel, '--memory', 'size=64M,shared=on', '--serial', `file=${serial}`, '--console', 'off',
      '--disk', `vhost_user=on,socket=${sock},id=disk0${diskExtra}`];
  }

  it('attaches the backend and the guest reads the capacity from the virtio-blk config space', async () => {
    const { sock, serial } = await backedDisk(0x4b * 512); // capacity 0x4b sectors = 'K'
    // With --console off the functions are: 0 host bridge, 1 rng, 2 the disk.
    const code = [
      ...cf8(2, 0x04), ...cfc(0x6), // memory decode + bus master
      ...cf8(2, 0x10), ...cfc(0xc000_0000), // BAR0 into the 32-bit window
      ...cf8(2, 0x14), ...cfc(0),
      ...x86.movEbx(0xc000_4000), ...x86.loadEaxFromEbx(), // device config: capacity (low dword)
      ...x86.movDx(0x3f8), ...x86.outDxAl(),
      ...x86.poweroffS5(), ...x86.jmpSelf(),
    ];
    const r = await runKumo(guestArgs(code, sock, serial));
    expect(r.stderr).toMatch(/vhost-user backend attached/);
    expect(r.stderr).toMatch(/powered off/);
    // On a software KVM kumo says why a stock kernel would never get anywhere.
    if (existsSync('/sys/module/kvm_pvm')) expect(r.stderr).toMatch(/kvm_pvm, a software KVM: stock Linux kernels do not boot on it/);
    expect(r.code).toBe(0);
    expect(readFileSync(serial, 'latin1')).toBe('K');
  }, 120_000);

  it('sends a config write the guest makes before DRIVER_OK to the back-end while the vCPU waits for it', async () => {
    const { sock, serial } = await backedDisk(1 << 20, { KUMO_LOG: 'info' });
    let backendLog = '';
    child!.stderr?.on('data', (d: Buffer) => (backendLog += d.toString()));
    const writeback = (v: number) => [...x86.movEbx(0xc000_4020), ...x86.movAl(v), 0x88, 0x03]; // mov [ebx], al
    const code = [
      ...cf8(2, 0x04), ...cfc(0x6), ...cf8(2, 0x10), ...cfc(0xc000_0000), ...cf8(2, 0x14), ...cfc(0),
      ...x86.movEbx(0xc000_0014), ...x86.movAl(3), 0x88, 0x03, // device status ACKNOWLEDGE | DRIVER: no DRIVER_OK
      ...writeback(0), ...writeback(1), ...x86.print('w', 0x3f8),
      ...x86.poweroffS5(), ...x86.jmpSelf(),
    ];
    const r = await runKumo(guestArgs(code, sock, serial));
    expect(r.code).toBe(0);
    expect(readFileSync(serial, 'latin1')).toBe('w');
    // Each write used to wait out 5 s and reach the back-end only at a DRIVER_OK that never came.
    expect(r.stderr).not.toMatch(/not yet sent to the back-end/);
    await new Promise((res) => setTimeout(res, 200));
    expect(backendLog.match(/cache mode changed/g)?.length).toBe(2);
  }, 120_000);

  it('does not log every writeback toggle of a guest flipping cache_type in a loop (rate-limited)', async () => {
    const { sock, serial } = await backedDisk(1 << 20, { KUMO_LOG: 'info' });
    let backendLog = '';
    child!.stderr?.on('data', (d: Buffer) => (backendLog += d.toString()));
    const code = [
      ...cf8(2, 0x04), ...cfc(0x6), ...cf8(2, 0x10), ...cfc(0xc000_0000), ...cf8(2, 0x14), ...cfc(0),
      ...x86.movEbx(0xc000_0014), ...x86.movAl(3), 0x88, 0x03, // ACKNOWLEDGE | DRIVER
      // 5000 writes of the writeback byte, alternating 0 and 1: mov al, cl; and al, 1; mov [ebx], al; dec ecx; jnz
      ...x86.movEcx(5000), ...x86.movEbx(0xc000_4020), 0x88, 0xc8, 0x24, 0x01, 0x88, 0x03, 0x49, 0x75, 0xf7,
      ...x86.print('w', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf(),
    ];
    const r = await runKumo(guestArgs(code, sock, serial));
    expect(r.code).toBe(0);
    expect(readFileSync(serial, 'latin1')).toBe('w');
    await new Promise((res) => setTimeout(res, 200));
    const lines = backendLog.match(/cache mode changed/g)?.length ?? 0;
    // At most a burst per second reaches the log; the last change is still said (with what was held back).
    expect(lines).toBeGreaterThan(0);
    expect(lines).toBeLessThan(200);
  }, 120_000);

  it('tells the guest its disk needs a reset (and says so) when the back-end goes away while the guest runs and does not come back', async () => {
    const { sock, serial } = await backedDisk(1 << 20);
    const common = (off: number, v: number) => [...x86.movEbx(0xc000_0000 + off), ...x86.movEax(v), 0x89, 0x03]; // mov [ebx], eax
    const code = [
      ...cf8(2, 0x04), ...cfc(0x6), ...cf8(2, 0x10), ...cfc(0xc000_0000), ...cf8(2, 0x14), ...cfc(0),
      ...common(0x08, 1), ...common(0x0c, 1), // driver features: VERSION_1
      ...common(0x14, 1 | 2 | 8), ...common(0x14, 1 | 2 | 8 | 4), // FEATURES_OK, DRIVER_OK (no queue enabled)
      ...x86.movEbx(0xc000_0014), 0x8a, 0x03, 0xa8, 0x40, 0x74, 0xfa, // until device_status has DEVICE_NEEDS_RESET
      // then 200 writes of the writeback byte (a guest toggling cache_type): nothing to send them to, nothing to log
      ...x86.movEcx(200), ...x86.movEbx(0xc000_4020), 0x88, 0x03, 0x49, 0x75, 0xfb,
      ...x86.print('R', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf(),
    ];
    // It waits for the back-end to come back (60 s by default, as Cloud Hypervisor): 2 s here.
    const env = { ...process.env, KUMO_LOG: 'info', KUMO_VHOST_USER_RECONNECT_MS: '2000' };
    const vm = spawn(process.execPath, [KUMO, ...guestArgs(code, sock, serial)], { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    vm.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((res) => vm.on('exit', (c) => res(c)));
    const timer = setTimeout(() => vm.kill('SIGKILL'), 60_000);
    for (let i = 0; i < 600 && !/vhost-user device started/.test(stderr); i++) await new Promise((r) => setTimeout(r, 50));
    await stopProcess(child); // the back-end goes away under the running guest
    child = null;
    const code2 = await exited;
    clearTimeout(timer);
    expect(stderr).toMatch(/the vhost-user back-end closed the connection; waiting for it to come back/);
    expect(stderr).toMatch(/the vhost-user back-end did not come back; the guest is told the device needs a reset/);
    expect(stderr).not.toMatch(/SET_CONFIG failed/);
    expect(readFileSync(serial, 'latin1')).toBe('R');
    expect(code2).toBe(0);
  }, 120_000);

  it('places a disk at the PCI slot its pci_device_id asks for (Cloud Hypervisor honours it too)', async () => {
    const { sock, serial } = await backedDisk(1 << 20);
    const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
    // Prints `ch` when the vendor/device dword of `slot` is `want`.
    const check = (slot: number, want: number, ch: string) => {
      const p = x86.print(ch, 0x3f8);
      return [...cf8(slot, 0), ...x86.movDx(0xcfc), 0xed /* in eax, dx */, 0x3d, ...le32(want), 0x75, p.length, ...p];
    };
    const code = [...check(7, 0x1042_1af4, 'D'), ...check(2, 0xffff_ffff, 'E'), ...x86.poweroffS5(), ...x86.jmpSelf()];
    const r = await runKumo(guestArgs(code, sock, serial, ',pci_device_id=7'));
    expect(r.code).toBe(0);
    expect(readFileSync(serial, 'latin1')).toBe('DE'); // virtio-blk at 7, nothing at 2 (where it used to land)
  }, 120_000);

  it('refuses a vhost-user disk without shared memory before touching KVM', async () => {
    dir = mkdtempSync(join(tmpdir(), 'kumo-vu-kvm-'));
    const kernel = join(dir, 'guest.elf');
    writeFileSync(kernel, pvhElf([...x86.poweroffS5(), ...x86.jmpSelf()]));
    const r = await runKumo(['--kernel', kernel, '--memory', 'size=64M', '--disk', `vhost_user=on,socket=${join(dir, 'none.sock')}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/need shared guest memory: add --memory shared=on/);
  }, 60_000);
});
