import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { x86, pvhElf, bzImage } from './fixtures/guests.js';
import { hasKvm } from './helpers.js';
import { asNobody } from '../unprivileged.js';

const KUMO = new URL('../../bin/kumo.js', import.meta.url).pathname;
const VIRTIOFSD = new URL('../../bin/kumo-virtiofsd.js', import.meta.url).pathname;
let dir = '';

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kumo-boot-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function kumo(args: string[]): { code: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, [KUMO, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, KUMO_LOG: 'warn' } });
  return { code: r.status, stderr: r.stderr, stdout: r.stdout };
}

function file(name: string, bytes: Buffer): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

// Prints the NUL-terminated string at ebx/rbx to the serial port (11-byte loop, valid in 32 and 64-bit code).
const PRINT_STR_AT_EBX = [0x66, 0xba, 0xf8, 0x03, 0x8a, 0x03, 0x84, 0xc0, 0x74, 0x05, 0xee, 0xff, 0xc3, 0xeb, 0xf5];

describe.skipIf(!hasKvm)('kumo CLI boots tiny kernels on /dev/kvm', () => {
  it('PVH ELF: cmdline via hvm_start_info, serial to a file, ACPI S5 → exit 0', () => {
    const code = [
      0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, // cmp dword [ebx], 0x336ec578 (start_info magic)
      0x75, 0x0f + PRINT_STR_AT_EBX.length, // jne → skip to poweroff without printing
      ...x86.print('PVH:', 0x3f8),
      0x8b, 0x5b, 0x18, // mov ebx, [ebx+24]  (cmdline_paddr)
      ...PRINT_STR_AT_EBX,
      ...x86.poweroffS5(), ...x86.jmpSelf(),
    ];
    // the jne skips the print(4 chars = 4 + 12 bytes) + mov(3) + loop; recompute precisely:
    const skip = x86.print('PVH:', 0x3f8).length + 3 + PRINT_STR_AT_EBX.length;
    code[7] = skip;
    const kernel = file('pvh.elf', pvhElf(code));
    const out = join(dir, 'pvh.serial');
    const r = kumo(['--kernel', kernel, '--cmdline', 'console=ttyS0 hello', '--memory', 'size=64M', '--serial', `file=${out}`, '--console', 'off']);
    expect(r.stderr).toMatch(/powered off/);
    expect(r.code).toBe(0);
    expect(readFileSync(out, 'latin1')).toBe('PVH:console=ttyS0 hello');
  });

  it('boots from a working directory that was removed (Node starts no vCPU worker there unless the VMM moves to /)', () => {
    const kernel = file('pvh-cwd.elf', pvhElf([...x86.print('CWD', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf()]));
    const out = join(dir, 'cwd.serial');
    const gone = join(dir, 'gone');
    const r = spawnSync('sh', ['-c', 'mkdir "$1" && cd "$1" && rmdir "$1" && shift && exec "$@"', 'sh', gone, process.execPath, KUMO,
      '--kernel', kernel, '--memory', 'size=64M', '--serial', `file=${out}`, '--console', 'off'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, KUMO_LOG: 'warn' } });
    expect(r.stderr).toMatch(/powered off/);
    expect(r.status).toBe(0);
    expect(readFileSync(out, 'latin1')).toBe('CWD');
  });

  it('boots when its working directory is removed while it waits for a vhost-user back-end (the main thread caches its cwd)', async () => {
    const kernel = file('pvh-late.elf', pvhElf([...x86.print('LATE', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf()]));
    const out = join(dir, 'late.serial');
    const sock = join(dir, 'late-fs.sock');
    const share = join(dir, 'late-share');
    const gone = join(dir, 'late-gone');
    mkdirSync(share);
    mkdirSync(gone);
    const vmm = spawn(process.execPath, [KUMO, '--kernel', kernel, '--memory', 'size=64M,shared=on', '--serial', `file=${out}`,
      '--console', 'off', '--fs', `tag=t,socket=${sock}`], { cwd: gone, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, KUMO_LOG: 'warn' } });
    let err = '';
    vmm.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => vmm.once('exit', (c) => r(c)));
    await new Promise((r) => setTimeout(r, 1500));
    rmdirSync(gone);
    const fsd = spawn(process.execPath, [VIRTIOFSD, `--socket-path=${sock}`, `--shared-dir=${share}`, '--sandbox=none'], { stdio: 'ignore' });
    try {
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('hung'), 30_000))]);
      expect(code, err).toBe(0);
      expect(readFileSync(out, 'latin1')).toBe('LATE');
    } finally {
      vmm.kill('SIGKILL');
      fsd.kill('SIGKILL');
    }
  }, 60_000);

  it('refuses, before the VM starts, an --rng source it cannot read and an option given twice (as Cloud Hypervisor)', () => {
    const kernel = file('idle.elf', pvhElf([...x86.poweroffS5(), ...x86.jmpSelf()]));
    const base = ['--kernel', kernel, '--memory', 'size=64M', '--console', 'off'];
    let r = kumo([...base, '--rng', 'src=/nonexistent/entropy']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--rng: cannot read src=/nonexistent/entropy: ENOENT');
    r = kumo([...base, '--rng', `src=${dir}`]);
    expect(r.stderr).toContain(`--rng: src=${dir} is a directory`);
    r = kumo(['--kernel', kernel, '--memory', 'size=64M', '--memory', 'shared=on', '--console', 'off']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('kumo: error: --memory given more than once');
    expect(kumo([...base, '--cpus', 'boot=2', '--cpus', 'max=4']).stderr).toContain('--cpus given more than once');
    expect(kumo([...base, '--rng', 'src=/dev/urandom']).code).toBe(0);
  });

  it('serial output to a slow pipe holds the guest back instead of losing bytes; to a closed one it is dropped, said once', () => {
    const lines = (n: number) => {
      const code = [...x86.movEcx(n)];
      const loop = code.length;
      code.push(0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xb0, 0x0a, 0xee, 0x49 /* dec ecx */, 0x75, 0); // "x\n" to 0x3f8
      code[code.length - 1] = (loop - code.length) & 0xff;
      code.push(...x86.print('END\n', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf());
      return file(`lines-${n}.elf`, pvhElf(code));
    };
    const run = (kernel: string, pipe: string) => spawnSync('sh', ['-c', `"${process.execPath}" "${KUMO}" --kernel "${kernel}" --memory size=64M --serial tty --console off ${pipe}`], {
      encoding: 'utf8', timeout: 60_000, env: { ...process.env, KUMO_LOG: 'warn' },
    });
    // A reader that starts late: the pipe (64 KiB) fills long before; every byte must still arrive.
    const slow = run(lines(150_000), '| (sleep 2; wc -c)');
    expect(slow.stdout.trim()).toBe(String(150_000 * 2 + 4));
    // A reader that goes away: EPIPE on every later byte, one line about it, and the guest runs to its poweroff.
    const gone = run(lines(20_000), '| head -c 10 >/dev/null');
    expect(gone.stderr.match(/guest output cannot be written/g)?.length).toBe(1);
    expect(gone.stderr.split('\n').length).toBeLessThan(6);
    expect(gone.stderr).toMatch(/powered off/);
  }, 120_000);

  it('leaves the boot GDT in guest memory as the vCPU was loaded from it (the IDT used to overwrite its TSS entry)', () => {
    const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
    const code: number[] = [0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for (let a = 0x520; a < 0x528; a++) code.push(0xa0, ...le32(a), 0xee); // mov al, [a]; out dx, al
    code.push(...x86.poweroffS5(), ...x86.jmpSelf());
    const out = join(dir, 'gdt.serial');
    const r = kumo(['--kernel', file('gdt.elf', pvhElf(code)), '--memory', 'size=64M', '--serial', `file=${out}`, '--console', 'off']);
    expect(r.code).toBe(0);
    // GDT entry 4 (selector 0x20): the 64-bit TSS descriptor TR holds, base 0, limit 0xfffff, type 0xb, present.
    expect([...readFileSync(out)]).toEqual([0xff, 0xff, 0, 0, 0, 0x8b, 0x8f, 0]);
  });

  it('--cpus max above boot boots the boot vCPUs and says that there is no CPU hot-plug', () => {
    const kernel = file('pvh-max.elf', pvhElf([...x86.print('MAX', 0x3f8), ...x86.poweroffS5(), ...x86.jmpSelf()]));
    const out = join(dir, 'max.serial');
    const r = kumo(['--kernel', kernel, '--cpus', 'boot=1,max=4', '--memory', 'size=64M', '--serial', `file=${out}`, '--console', 'off']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/CPU hot-plug is not supported/);
    expect(readFileSync(out, 'latin1')).toBe('MAX');
  });

  it('PVH ELF with an initramfs: the modlist entry points at the initramfs bytes', () => {
    const code = [
      0x8b, 0x5b, 0x10, // mov ebx, [ebx+16]  (modlist_paddr)
      0x8b, 0x1b, // mov ebx, [ebx]  (module paddr)
      ...PRINT_STR_AT_EBX,
      ...x86.poweroffS5(), ...x86.jmpSelf(),
    ];
    const kernel = file('pvh2.elf', pvhElf(code));
    const initrd = file('initrd.img', Buffer.from('INITRAMFS-BYTES\0'));
    const out = join(dir, 'pvh2.serial');
    const r = kumo(['--kernel', kernel, '--initramfs', initrd, '--memory', 'size=64M', '--serial', `file=${out}`, '--console', 'off']);
    expect(r.code).toBe(0);
    expect(readFileSync(out, 'latin1')).toBe('INITRAMFS-BYTES');
  });

  it('bzImage: 64-bit entry with rsi = boot_params; cmd_line_ptr works; i8042 reset → exit 0', () => {
    const code = [
      0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00, // mov ebx, [rsi+0x228]  (cmd_line_ptr)
      ...PRINT_STR_AT_EBX,
      ...x86.resetI8042(), ...x86.jmpSelf(),
    ];
    const kernel = file('bzImage', bzImage(code));
    const out = join(dir, 'bz.serial');
    const r = kumo(['--kernel', kernel, '--cmdline', 'root=/dev/vda quiet', '--memory', 'size=64M', '--serial', `file=${out}`, '--console', 'off']);
    expect(r.stderr).toMatch(/requested a reset/);
    expect(r.code).toBe(0);
    expect(readFileSync(out, 'latin1')).toBe('root=/dev/vda quiet');
  });

  it('--serial off means no UART at 0x3f8 (as Cloud Hypervisor); --serial null keeps one that discards', () => {
    // Powers off when the line status register reads 0xff (nothing decodes the port), else asks the i8042 for a reset.
    const off = [...x86.poweroffS5(), ...x86.jmpSelf()];
    const kernel = file('lsr.elf', pvhElf([0x66, 0xba, 0xfd, 0x03, 0xec, 0x3c, 0xff, 0x75, off.length, ...off, 0xb0, 0xfe, 0xe6, 0x64, ...x86.jmpSelf()]));
    expect(kumo(['--kernel', kernel, '--memory', 'size=64M', '--serial', 'off', '--console', 'off']).stderr).toMatch(/powered off/);
    expect(kumo(['--kernel', kernel, '--memory', 'size=64M', '--serial', 'null', '--console', 'off']).stderr).toMatch(/requested a reset \(i8042\)/);
  });

  it('virtio-console emergency writes (emerg_wr, written at any time) reach --console output', () => {
    const cf8 = (reg: number) => [...x86.movDx(0xcf8), ...x86.movEax((0x8000_0000 | (2 << 11) | reg) >>> 0), ...x86.outDxEax()];
    const cfc = (v: number) => [...x86.movDx(0xcfc), ...x86.movEax(v), ...x86.outDxEax()];
    const emerg = (c: string) => [...x86.movEbx(0xc000_4008), ...x86.movAl(c.charCodeAt(0)), 0x88, 0x03]; // mov [ebx], al
    // Functions: 0 host bridge, 1 rng, 2 console. No driver set up: the bytes go out all the same.
    const code = [...cf8(0x04), ...cfc(0x6), ...cf8(0x10), ...cfc(0xc000_0000), ...cf8(0x14), ...cfc(0), ...emerg('O'), ...emerg('K'), ...x86.poweroffS5(), ...x86.jmpSelf()];
    const out = join(dir, 'emerg.console');
    const r = kumo(['--kernel', file('emerg.elf', pvhElf(code)), '--memory', 'size=64M', '--serial', 'off', '--console', `file=${out}`]);
    expect(r.code).toBe(0);
    expect(readFileSync(out, 'latin1')).toBe('OK');
  });

  it('a guest that restarts through the reset vector (Linux\'s default reboot here) gets its reset', () => {
    // mov eax, 0xffff0; jmp eax: where a CPU restarting in real mode begins. Nothing was there but zeroes.
    const kernel = file('restart.elf', pvhElf([0xb8, 0xf0, 0xff, 0x0f, 0x00, 0xff, 0xe0]));
    const r = spawnSync(process.execPath, [KUMO, '--kernel', kernel, '--memory', 'size=64M', '--serial', 'off', '--console', 'off'], {
      encoding: 'utf8', timeout: 20_000, env: { ...process.env, KUMO_LOG: 'warn' },
    });
    expect(r.stderr).toMatch(/guest requested a reset \(i8042\)/);
    expect(r.status).toBe(0);
  }, 30_000);

  it('a guest triple fault is a reset request (Linux reboot=t; Cloud Hypervisor takes it so), its registers logged', () => {
    const kernel = file('tf.elf', pvhElf([...x86.ud2()]));
    const r = kumo(['--kernel', kernel, '--memory', 'size=64M', '--serial', 'off', '--console', 'off']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/guest requested a reset \(vcpu0 triple fault\)/);
    expect(r.stderr).toMatch(/rip=0x0000000000100000/);
    expect(r.stderr).toMatch(/cr0=/);
  });
});

describe('kumo CLI rejects bad input before any KVM call', () => {
  const cases: [string, (d: string) => string[], RegExp][] = [
    ['missing kernel file', () => ['--kernel', '/nonexistent/vmlinux'], /cannot read kernel \/nonexistent\/vmlinux: ENOENT/],
    ['kernel that is not a kernel', (d) => ['--kernel', join(d, 'junk')], /neither an ELF vmlinux with a PVH note nor a bzImage/],
    ['ELF without a PVH note', (d) => ['--kernel', join(d, 'nonote.elf')], /no PVH entry note/],
    ['truncated ELF', (d) => ['--kernel', join(d, 'trunc.elf')], /truncated|past the end/],
    ['unknown --memory key', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=64M,sise=1G'], /--memory: unknown option "sise"/],
    ['malformed --memory size', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=lots'], /invalid value "lots" for "size"/],
    ['hugepage_size without hugepages', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=64M,hugepage_size=2M'], /hugepage_size requires hugepages=on/],
    ['memory larger than the host', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=64T'], /larger than host memory|exceeds the guest physical address space/],
    ['memory too small', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=1M'], /too small/],
    ['unknown --cpus key', (d) => ['--kernel', join(d, 'ok.elf'), '--cpus', 'boot=1,cores=2'], /--cpus: unknown option "cores"/],
    ['cpus max below boot', (d) => ['--kernel', join(d, 'ok.elf'), '--cpus', 'boot=2,max=1'], /max must not be below boot/],
    ['bad --serial mode', (d) => ['--kernel', join(d, 'ok.elf'), '--serial', 'pty'], /--serial: mode "pty" is not supported/],
    ['unknown --rng key', (d) => ['--kernel', join(d, 'ok.elf'), '--rng', 'source=/dev/random'], /--rng: unknown option "source"/],
    ['unknown flag', (d) => ['--kernel', join(d, 'ok.elf'), '--bogus', 'x'], /unknown option '--bogus'/],
    ['initramfs bigger than RAM', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=64M', '--initramfs', join(d, 'big.img')], /the initramfs \(70M\) does not fit between the kernel's end \(1\.0M\) and 64M \{"size":73400320/],
    ['missing initramfs', (d) => ['--kernel', join(d, 'ok.elf'), '--initramfs', join(d, 'none.img')], /cannot read initramfs .*ENOENT/],
    ['more disk queues than boot vCPUs (as Cloud Hypervisor)', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=64M,shared=on', '--disk', 'vhost_user=on,socket=/tmp/none.sock,num_queues=2'], /--disk: num_queues \(2\) must not exceed the boot vCPUs \(1\)/],
    ['more fs queues than boot vCPUs', (d) => ['--kernel', join(d, 'ok.elf'), '--cpus', 'boot=2', '--memory', 'size=64M,shared=on', '--fs', 'tag=t,socket=/tmp/none.sock,num_queues=4'], /--fs: num_queues \(4\) must not exceed the boot vCPUs \(2\)/],
    ['a disk queue of 2 entries', (d) => ['--kernel', join(d, 'ok.elf'), '--memory', 'size=64M,shared=on', '--disk', 'vhost_user=on,socket=/tmp/none.sock,queue_size=2'], /--disk: queue_size must be above 2/],
    ['command line too long', (d) => ['--kernel', join(d, 'ok.elf'), '--cmdline', 'x'.repeat(70000)], /the kernel command line is 70000 bytes; this kernel takes at most 65535/],
  ];

  beforeAll(() => {
    writeFileSync(join(dir, 'junk'), 'this is not a kernel');
    writeFileSync(join(dir, 'ok.elf'), pvhElf([...x86.jmpSelf()]));
    writeFileSync(join(dir, 'nonote.elf'), pvhElf([...x86.jmpSelf()], 0x100000, { note: false }));
    writeFileSync(join(dir, 'trunc.elf'), pvhElf([...x86.jmpSelf()]).subarray(0, 100));
    const big = Buffer.alloc(70 << 20);
    writeFileSync(join(dir, 'big.img'), big);
  });

  it.each(cases)('%s', async (_name, args, message) => {
    const { main } = await import('../../vmm/cli.js');
    let err = '';
    let ran = false;
    const code = await main(args(dir), {
      run: async () => {
        ran = true;
        throw new Error('must not run');
      },
      stderr: (s) => (err += s),
    });
    expect(code).toBe(1);
    expect(err).toMatch(/^kumo: error: /);
    expect(err).toMatch(message);
    expect(ran).toBe(false);
  });

  it.skipIf(!existsSync('/usr/bin/strace'))('as a process: exit 1, the message, and /dev/kvm never opened (strace)', () => {
    const log = join(dir, 'strace.log');
    const r = spawnSync('strace', ['-f', '-e', 'trace=open,openat', '-o', log, process.execPath, KUMO, '--kernel', join(dir, 'ok.elf'), '--memory', 'size=64M,bogus=1'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/kumo: error: --memory: unknown option "bogus"/);
    const trace = readFileSync(log, 'utf8');
    expect(trace).toMatch(/ok\.elf|kumo/); // strace did record the run
    expect(trace).not.toMatch(/\/dev\/kvm/);
  });
});

describe.skipIf(process.getuid?.() !== 0)('npm run demo', () => {
  it('as an ordinary user says it needs root, in one line, before building anything', () => {
    const base = mkdtempSync(join(tmpdir(), 'kumo-demo-user-'));
    try {
      const cmd = asNobody(base, 'node_modules/tsx/dist/cli.mjs', [join(base, 'repo', 'scripts/demo.ts')]);
      // cwd: one nobody may enter (esbuild, under tsx, starts its service there; a CI clone may sit in a 0700 dir).
      const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 60_000, cwd: base, env: { ...process.env, HOME: base } });
      expect(r.status).toBe(1);
      expect(r.stderr.trim()).toBe('kumo demo: the demo needs root (TAP devices, and the nested lab where /dev/kvm is not hardware-backed): run it with sudo');
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe('npm run lab', () => {
  it('--help prints the usage and exits 0 without starting the lab (it ran "sh -c --help" in L1)', () => {
    const tsx = new URL('../../node_modules/tsx/dist/cli.mjs', import.meta.url).pathname;
    const r = spawnSync(process.execPath, [tsx, new URL('../../vmm/lab/cli.ts', import.meta.url).pathname, '--help'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^usage: npm run lab -- CMD \[ARGS\.\.\.\]/);
    expect(r.stderr).not.toMatch(/L1|qemu/i);
  });
});

describe('bin launchers in a checkout without its dependencies', () => {
  it('say in one line to run scripts/setup.sh (it was a stack trace about tsx)', () => {
    const d = mkdtempSync(join(tmpdir(), 'kumo-bare-'));
    try {
      mkdirSync(join(d, 'bin'));
      for (const f of ['launch.js', 'kumo.js']) writeFileSync(join(d, 'bin', f), readFileSync(new URL(`../../bin/${f}`, import.meta.url)));
      writeFileSync(join(d, 'package.json'), readFileSync(new URL('../../package.json', import.meta.url)));
      const r = spawnSync(process.execPath, [join(d, 'bin/kumo.js'), '--help'], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status).toBe(1);
      expect(r.stderr.trim()).toBe(`kumo: the dependencies are not installed: run \`bash scripts/setup.sh\` (or npm install && npm run build) in ${d}/`);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
