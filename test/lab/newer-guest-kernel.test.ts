// kumo-virtiofsd under a newer guest kernel: the lab's L1 boots bookworm-backports' cloud kernel (6.12) instead of
// bookworm's 6.1, which predates two things kumo-virtiofsd offers as virtiofsd does. FUSE_DIRECT_IO_ALLOW_MMAP
// (Linux 6.6): with --cache=never every file is opened for direct I/O, and only --allow-mmap lets a guest still map
// one shared. FUSE_CREATE_SUPP_GROUP (Linux 6.5): a creation in a directory whose group the caller has only as a
// supplementary group carries that group, so the host grants what the guest granted.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runInLab, type LabResult } from '../../vmm/lab/lab.js';
import { Init } from '../../protocol/fuse/index.js';
import { startProcess, stopProcess } from '../vmm-vhost-user/harness.js';
import { whyNoLab } from './skip.js';

const FILE = 'test/lab/newer-guest-kernel.test.ts';
const root = path.resolve(import.meta.dirname, '../..');
const bin = (name: string): string => path.join(root, 'bin', `${name}.js`);
const skip = whyNoLab(FILE);
const ENODEV = 19;

/** L1's job: mounts both shares, maps a file on each, creates through a supplementary group. */
function jobScript(w: string): string {
  return String.raw`
set -u
W=${w}
check() { name=$1; shift; if "$@" >$W/last.err 2>&1; then echo "ok $name"; else echo "FAIL $name: $(tail -c 600 $W/last.err)"; fi; }
echo "guest-kernel $(uname -r)"
mkdir -p $W/ma $W/mb
check mount-allow mount -t virtiofs kumo-mmap $W/ma
check mount-plain mount -t virtiofs kumo-plain $W/mb
check mmap-allowed python3 $W/map.py $W/ma/mm
check mmap-refused python3 $W/map.py $W/mb/mm refused
check supp-group-create setpriv --reuid=3000 --regid=3000 --groups=4000 sh -c "echo from-3000 > $W/ma/g/f"
check supp-group-mkdir setpriv --reuid=3000 --regid=3000 --groups=4000 mkdir $W/ma/g/d
check umount umount $W/ma $W/mb
`;
}

/** Maps the file shared and writes through the mapping; with "refused", expects the kernel's ENODEV instead. */
const MAP_PY = `import mmap, sys
f = open(sys.argv[1], 'w+b')
f.truncate(8192)
try:
    m = mmap.mmap(f.fileno(), 8192, mmap.MAP_SHARED)
except OSError as e:
    sys.exit(0 if len(sys.argv) > 2 and e.errno == ${ENODEV} else 1)
if len(sys.argv) > 2:
    sys.exit(1)
m[100:105] = b'hello'
m.flush()
m.close()
f.close()
`;

describe.skipIf(skip !== null)('kumo-virtiofsd under a 6.12 guest kernel (bookworm-backports in L1)', () => {
  let r: LabResult;
  let w: string;
  let lines: string[] = [];
  let allowLog = '';
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    w = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-newk-'));
    // L1's user 3000 walks to the share's mount point through here.
    fs.chmodSync(w, 0o755);
    const allow = path.join(w, 'allow');
    fs.mkdirSync(path.join(allow, 'g'), { recursive: true });
    // Group 4000 may write here; guest user 3000 has 4000 only as a supplementary group.
    fs.chownSync(path.join(allow, 'g'), 0, 4000);
    fs.chmodSync(path.join(allow, 'g'), 0o775);
    fs.mkdirSync(path.join(w, 'plain'));
    fs.writeFileSync(path.join(w, 'map.py'), MAP_PY);
    fs.writeFileSync(path.join(w, 'job.sh'), jobScript(w));
    const allowSock = path.join(w, 'allow.sock');
    const plainSock = path.join(w, 'plain.sock');
    const a = await startProcess(process.execPath, [bin('kumo-virtiofsd'), `--socket-path=${allowSock}`, `--shared-dir=${allow}`,
      '--cache=never', '--allow-mmap'], allowSock, { KUMO_LOG: 'info' });
    a.stderr?.on('data', (d: Buffer) => (allowLog += d.toString()));
    procs.push(a);
    procs.push(await startProcess(process.execPath, [bin('kumo-virtiofsd'), `--socket-path=${plainSock}`, `--shared-dir=${path.join(w, 'plain')}`,
      '--cache=never'], plainSock));
    r = await runInLab(`sh ${path.join(w, 'job.sh')}`, {
      kernel: 'backports', timeoutMs: 10 * 60_000,
      fsShares: [{ socket: allowSock, tag: 'kumo-mmap' }, { socket: plainSock, tag: 'kumo-plain' }],
    });
    lines = r.output.split('\n').map((l) => l.trim());
    console.log(`lab with the backports kernel: L1 up in ${r.l1BootS.toFixed(1)} s, whole run ${r.wallS.toFixed(1)} s`);
    const failed = lines.filter((l) => l.startsWith('FAIL '));
    if (failed.length) console.log(failed.join('\n'));
  }, 15 * 60_000);

  afterAll(async () => {
    for (const p of procs) await stopProcess(p);
    if (w) fs.rmSync(w, { recursive: true, force: true });
  });

  it('boots L1 on the newer kernel, which takes both features from the daemon', () => {
    expect(lines.find((l) => l.startsWith('guest-kernel '))).toMatch(/^guest-kernel 6\.(1[0-9]|[6-9])\./);
    for (const name of ['mount-allow', 'mount-plain', 'umount']) expect(lines, name).toContain(`ok ${name}`);
    const init = /"flags":"0x([0-9a-f]+)"[^\n]*FUSE session initialised/.exec(allowLog);
    expect(init, 'INIT line in the --allow-mmap daemon log').not.toBeNull();
    const flags = BigInt(`0x${init![1]}`);
    expect(flags & Init.DIRECT_IO_ALLOW_MMAP).toBe(Init.DIRECT_IO_ALLOW_MMAP);
    expect(flags & Init.CREATE_SUPP_GROUP).toBe(Init.CREATE_SUPP_GROUP);
  });

  it('--allow-mmap lets the guest map a direct-I/O file shared, and the host sees its writes; without it the kernel refuses', () => {
    expect(lines).toContain('ok mmap-allowed');
    expect(fs.readFileSync(path.join(w, 'allow', 'mm')).subarray(100, 105).toString()).toBe('hello');
    expect(lines).toContain('ok mmap-refused');
  });

  it('a creation through a supplementary group the guest granted is granted on the host too, owned by the caller', () => {
    expect(lines).toContain('ok supp-group-create');
    expect(lines).toContain('ok supp-group-mkdir');
    for (const made of ['f', 'd']) {
      const st = fs.statSync(path.join(w, 'allow', 'g', made));
      expect(`${st.uid}:${st.gid}`, made).toBe('3000:3000');
    }
    expect(fs.readFileSync(path.join(w, 'allow', 'g', 'f'), 'utf8')).toBe('from-3000\n');
  });
});
