// QEMU as the vhost-user front-end of our back-ends, with a real Linux driving them. The lab's L1 (QEMU TCG,
// Debian kernel) boots with its root share served by kumo-virtiofsd instead of QEMU's virtiofsd, and gets a
// second share on kumo-virtiofsd in its namespace sandbox (and a fourth from one started as an ordinary user, in
// a user namespace of its own), vhost-user-blk-pci disks on kumo-vhost-user-blk (one
// readonly=on) and a virtio-net NIC on kumo-vhost-user-net. L1's virtiofs, virtio_blk and virtio_net drivers do
// the work a user would: copy trees, write and fsync large files, fio with verification (also across a kill -9
// and restart of the disk back-end), discard, mkfs.ext4 and mount, TCP to the host. What L1 wrote is then
// checked from the host side (the share's files, the image with e2fsck).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runInLab, type LabResult } from '../../vmm/lab/lab.js';
import { startProcess, stopProcess } from '../vmm-vhost-user/harness.js';
import { whyNoLab } from './skip.js';
import { asNobody, nobodyDirs } from '../unprivileged.js';

const FILE = 'test/lab/qemu-frontend.test.ts';
const root = path.resolve(import.meta.dirname, '../..');
const bin = (name: string): string => path.join(root, 'bin', `${name}.js`);
const MiB = 1 << 20;
const IMAGE_MIB = 256;
/** Host side of the NIC (kumo-vhost-user-net's TAP) and L1's address on it. */
const HOST_IP = '192.168.247.1';
const GUEST_IP = '192.168.247.2';

function whyNot(): string | null {
  const lab = whyNoLab(FILE);
  if (lab !== null) return lab;
  let why: string | null = null;
  if (!fs.existsSync('/dev/net/tun')) why = 'no /dev/net/tun for the vhost-user-net TAP';
  else if (spawnSync('e2fsck', ['-V']).error) why = 'e2fsck missing (apt-get install e2fsprogs)';
  else if (spawnSync('fio', ['--version']).error) why = 'fio missing (apt-get install fio)';
  else if (!fs.existsSync('/dev/loop-control') || spawnSync('losetup', ['--version']).error) why = 'no loop devices (losetup) for the 4096-byte-sector disk';
  if (why) console.warn(`${FILE} skipped: ${why}`);
  return why;
}
const skip = whyNot();

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const shaFile = (f: string): string => sha(fs.readFileSync(f));

function readAt(file: string, offset: number, len: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(len);
    fs.readSync(fd, b, 0, len, offset);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

/** The job L1 runs (sh, chrooted into the host root it reads through kumo-virtiofsd). Prints `ok NAME` / `FAIL NAME`. */
function jobScript(w: string, port: number): string {
  return String.raw`
set -u
W=${w}
check() { name=$1; shift; if "$@" >$W/last.err 2>&1; then echo "ok $name"; else echo "FAIL $name: $(tail -c 600 $W/last.err)"; fi; }

# ---- virtio-fs: the share is L1's own root -------------------------------------------------------------
F=$W/fs
echo "guest-sum from-host $(sha256sum $F/from-host | cut -d' ' -f1)"
check big-write dd if=/dev/urandom of=$F/big bs=1M count=48 conv=fsync
sha256sum $F/big | cut -d' ' -f1 > $F/big.guest-sum
check tree-copy cp -a ${root}/protocol $F/tree
check tree-diff diff -r ${root}/protocol $F/tree
mkdir -p $F/untar
check tar-roundtrip sh -c "tar -C $F -cf - tree | tar -C $F/untar -xf - && diff -r $F/tree $F/untar/tree"
echo "guest-count tree $(find $F/tree | wc -l)"
for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=$F/par$i bs=64k count=40 conv=fsync 2>/dev/null & done; wait
for i in 1 2 3 4 5 6; do echo "guest-sum par$i $(sha256sum $F/par$i | cut -d' ' -f1)"; done
check hardlink sh -c "ln $F/par1 $F/par1.link && test \$(stat -c %h $F/par1) = 2 && cmp $F/par1 $F/par1.link"
check symlink sh -c "ln -s par2 $F/par2.sym && test \$(readlink $F/par2.sym) = par2 && cmp $F/par2 $F/par2.sym"
check rename-over sh -c "cp $F/par3 $F/victim && mv $F/par4 $F/victim && test ! -e $F/par4"
check chmod sh -c "chmod 640 $F/par5 && test \$(stat -c %a $F/par5) = 640"
check truncate sh -c "truncate -s 12345 $F/par6 && test \$(stat -c %s $F/par6) = 12345"
check utimes sh -c "touch -d '2001-02-03 04:05:06 UTC' $F/par5 && test \$(stat -c %Y $F/par5) = 981173106"
check fallocate sh -c "fallocate -l 3M $F/falloc && test \$(stat -c %s $F/falloc) = 3145728"
check mkfifo sh -c "mkfifo $F/fifo && test -p $F/fifo"
check unlink-rmdir sh -c "mkdir -p $F/gone/a/b && touch $F/gone/a/b/c && rm -r $F/gone && test ! -e $F/gone"
check append sh -c "printf abc > $F/app && printf def >> $F/app && test \$(cat $F/app) = abcdef"
echo "guest-sum python-tar $(tar -C /usr/lib -cf - python3.11 | sha256sum | cut -d' ' -f1)"
echo "guest-sum node-modules-list $(find ${root}/node_modules -printf '%p %s %m %y %l\n' | sort | sha256sum | cut -d' ' -f1)"
echo "guest-git-head $(git -C ${root} log -1 --format=%H)"
check mmap-write /usr/bin/python3 -c "import mmap; f = open('$F/mm', 'w+b'); f.truncate(8192); m = mmap.mmap(f.fileno(), 8192); m[100:105] = b'hello'; m.flush(); m.close(); f.close()"
check node-reads-share node -e "require('fs').readFileSync('${root}/package.json','utf8').includes('kumo') || process.exit(1)"

# ---- a second share: kumo-virtiofsd, default namespace sandbox, --xattr --writeback, inodes by file handle
S=$W/mnt2
mkdir -p $S
check share2-mount mount -t virtiofs kumo2 $S
check share2-sees-host sh -c "test \"\$(cat $S/hello)\" = 'from the host'"
check share2-xattr /usr/bin/python3 -c "
import os; p = '$S/x'; open(p, 'w').write('x'); os.setxattr(p, 'user.kumo', b'v1')
assert os.getxattr(p, 'user.kumo') == b'v1' and 'user.kumo' in os.listxattr(p)
os.removexattr(p, 'user.kumo'); os.setxattr(p, 'user.keep', b'v2')"
# --posix-acl: a default ACL decides a new file's mode (the guest's umask 077 does not apply), elsewhere the umask does.
check share2-acl /usr/bin/python3 -c "
import os, struct
d = '$S/acl'; os.mkdir(d)
e = lambda tag, perm, uid=0xffffffff: struct.pack('<HHI', tag, perm, uid)
os.setxattr(d, 'system.posix_acl_default', struct.pack('<I', 2) + e(1, 7) + e(2, 5, 1234) + e(4, 5) + e(16, 7) + e(32, 5))
os.umask(0o077); open(d + '/inh', 'w').close(); open('$S/masked', 'w').close()
m = lambda p: oct(os.stat(p).st_mode & 0o777)
assert m(d + '/inh') == '0o664' and m('$S/masked') == '0o600', (m(d + '/inh'), m('$S/masked'))
assert struct.unpack_from('<I', os.getxattr(d + '/inh', 'system.posix_acl_access'), 16)[0] == 1234"
# --killpriv-v2: an unprivileged writer's write reaches the daemon flagged, and the daemon clears set-user-ID
# (root opens the file: the share's path is not searchable by nobody).
check share2-killpriv sh -c "touch $S/suid && chmod 4777 $S/suid && setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x >&3' 3>>$S/suid"
echo "guest-mode suid $(stat -c %a $S/suid)"
# -o flock: the host holds hostlock for the whole run; a guest flock waits for another guest holder and gets it.
check share2-flock-host sh -c "! flock -n $S/hostlock true"
check share2-flock-wait sh -c "flock $S/glock sleep 2 & sleep 0.5; s=\$(date +%s); flock $S/glock true; e=\$(date +%s); wait; test \$((e - s)) -ge 1"
check share2-write sh -c "dd if=/dev/urandom of=$S/wb bs=64k count=64 2>/dev/null && sha256sum $S/wb | cut -d' ' -f1 > $W/wb.guest-sum"
check share2-rename sh -c "mkdir $S/d && mv $S/wb $S/d/wb && test -f $S/d/wb && test ! -e $S/wb"
check share2-umount umount $S

# ---- a third share: ID translation (refused beside --posix-acl, as by virtiofsd) and a host mount inside it
T=$W/mnt3
mkdir -p $T
check share3-mount mount -t virtiofs kumo3 $T
# --translate-uid/gid map:3000:4000:1 (and forbid-guest 3001): a guest user 3000 creates a file the host sees owned by 4000,
# L1 sees it back as 3000, and a chown to the forbidden 3001 is refused (the share's path is not searchable by 3000: cd first).
check share3-idmap sh -c "mkdir $T/idm && chmod 777 $T/idm && cd $T/idm && setpriv --reuid=3000 --regid=3000 --clear-groups touch f && test \$(stat -c %u:%g f) = 3000:3000"
check share3-idmap-forbid sh -c "! chown 3001 $T/idm/f 2>/dev/null && test \$(stat -c %u $T/idm/f) = 3000"
echo "guest-owner hostowned $(stat -c %u:%g $T/hostowned)"
# Submounts are announced by default: the host's tmpfs on sub/ becomes a mount of its own in L1 (its own st_dev), the
# directories inside it do not, so a link between two of them stays within one mount (EXDEV otherwise). stat of sub
# itself would show the mount point before the automount; sub/. walks into it.
check share3-submount sh -c "test \$(stat -c %d $T/sub/.) != \$(stat -c %d $T) && test \$(stat -c %d $T/sub/a/.) = \$(stat -c %d $T/sub/.) && grep -q ' $T/sub ' /proc/mounts"
check share3-submount-link sh -c "echo x > $T/sub/a/f && mv $T/sub/a/f $T/sub/b/f && ln $T/sub/b/f $T/sub/a/g && test \$(stat -c %h $T/sub/b/f) = 2"
# bind/ is the host's bind mount of orig/, on the share's own filesystem: only the mount ID tells it apart, and it
# must still become a mount of its own in L1 (one directory with two parents otherwise), showing orig/'s files.
check share3-bind sh -c "test \$(stat -c %d $T/bind/.) != \$(stat -c %d $T) && grep -q ' $T/bind ' /proc/mounts && echo y > $T/bind/f && test \$(cat $T/orig/f) = y && test -d $T/bind/inner && test \$(stat -c %d $T/bind/inner/.) = \$(stat -c %d $T/bind/.)"
check share3-umount umount -R $T

# ---- a fourth share: kumo-virtiofsd started by an ordinary user (uid 65534), in a user namespace of its own
N=$W/mnt4
mkdir -p $N
check share4-mount mount -t virtiofs kumo4 $N
# L1's root creates as the daemon's user (root has no ID in that namespace), and sees that owner.
check share4-root-creates sh -c "echo hi > $N/by-root && test \"\$(cat $N/by-root)\" = hi && test \$(stat -c %u:%g $N/by-root) = 65534:65534"
check share4-tree sh -c "mkdir -p $N/d && cp -r ${root}/protocol/fuse $N/d/ && diff -r ${root}/protocol/fuse $N/d/fuse && mv $N/d/fuse $N/d/moved && rm -r $N/d/moved"
check share4-umount umount $N

# ---- vhost-user-blk: /dev/vda ---------------------------------------------------------------------------
echo "guest-sum vda-head $(dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "guest-size vda $(cat /sys/block/vda/size)"
echo "guest-queues vda $(ls /sys/block/vda/mq | wc -l)"
check fio-verify fio --name=v --filename=/dev/vda --offset=1M --size=48M --rw=randwrite --bs=4k --iodepth=16 --numjobs=1 --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse
# The host kills the back-end (kill -9) while this runs and starts a new one; QEMU reconnects and resubmits. L1 runs
# the disk writethrough meanwhile: QEMU never writes the config to the new back-end, which must take L1's choice back
# from the inflight buffer (else it would ack writes from its page cache to a guest that sends no FLUSH).
check vda-writethrough sh -c "echo 'write through' > /sys/block/vda/cache_type && grep -q 'write through' /sys/block/vda/cache_type"
touch $W/crash-start
check fio-across-restart fio --name=c --filename=/dev/vda --offset=64M --size=32M --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --loops=4 --output-format=terse
touch $W/crash-end
check vda-writeback sh -c "echo 'write back' > /sys/block/vda/cache_type"
dd if=/dev/urandom of=$W/pattern bs=1M count=4 2>/dev/null
check direct-write dd if=$W/pattern of=/dev/vda bs=1M seek=128 oflag=direct conv=fsync
check discard-zeroes sh -c "blkdiscard -o 160M -l 8M /dev/vda && cmp -n 8388608 /dev/zero /dev/vda -i 0:167772160"
check write-zeroes sh -c "blkdiscard -z -o 200M -l 4M /dev/vda && cmp -n 4194304 /dev/zero /dev/vda -i 0:209715200"
echo "guest-ro vdb $(cat /sys/block/vdb/ro)"
echo "guest-sum vdb $(dd if=/dev/vdb bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)"
check vdb-refuses-writes sh -c "! dd if=/dev/zero of=/dev/vdb bs=4k count=1 oflag=direct 2>/dev/null"

# ---- vhost-user-blk direct=on on a 4096-byte-sector host device: /dev/vdc ------------------------------
# 512-byte sectors to L1; writes of part of a host block are patched into it (read, patch, write back).
echo "guest-blocks vdc $(cat /sys/block/vdc/queue/logical_block_size) $(cat /sys/block/vdc/queue/physical_block_size)"
for bs in 512 1536 4096; do
  check vdc-verify-$bs fio --name=d$bs --filename=/dev/vdc --offset=$((bs * 1024)) --size=$((bs * 512)) --rw=randwrite --bs=$bs --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse
done
# WRITE_ZEROES from sector 1 to the end of the second block: a partial block, then a whole one.
check vdc-zero-ragged sh -c "blkdiscard -z -o 512 -l 7680 /dev/vdc && cmp -n 7680 /dev/zero /dev/vdc -i 0:512"
mkdir -p $W/mnt
check mkfs mkfs.ext4 -q -F -E offset=$((224 * 1048576)) /dev/vda 16M
check mount sh -c "losetup -o $((224 * 1048576)) --sizelimit 16777216 -f --show /dev/vda > $W/loopdev && mount -t ext4 \$(cat $W/loopdev) $W/mnt"
check ext4-fill sh -c "cp -a ${root}/protocol $W/mnt/tree && sync && diff -r ${root}/protocol $W/mnt/tree"
check umount sh -c "umount $W/mnt && losetup -d \$(cat $W/loopdev)"

# ---- vhost-user-net: eth0 -------------------------------------------------------------------------------
check eth0-up sh -c "ip link set eth0 up && ip addr add ${GUEST_IP}/24 dev eth0"
echo "guest-queues eth0 $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
check tcp-echo node -e "
  const s = require('net').connect(${port}, '${HOST_IP}', () => s.write('hello from L1\n'));
  let got = ''; s.on('data', (d) => { got += d; if (got.includes('\n')) { s.end(); process.exit(got === 'HELLO FROM L1\n' ? 0 : 1); } });
  s.on('error', (e) => { console.error(e.message); process.exit(1); }); setTimeout(() => process.exit(2), 20000);"
sync
`;
}

interface Restart {
  killed: boolean;
  /** fio had not finished when the back-end was killed. */
  fioStillRunning: boolean;
  /** The restarted back-end's log (info). */
  log: string;
}

/**
 * Once L1 starts the crash fio, kills the blk back-end with SIGKILL mid-run and starts a new one on the same
 * socket (QEMU's chardev reconnects); the new process replaces procs[i]. Gives up once the lab run has ended.
 */
async function restartDuringFio(w: string, sock: string, args: string[], procs: ChildProcess[], i: number, lab: { done: boolean }): Promise<Restart> {
  while (!fs.existsSync(path.join(w, 'crash-start'))) {
    if (lab.done) return { killed: false, fioStillRunning: false, log: '' };
    await sleep(100);
  }
  await sleep(2000);
  procs[i].kill('SIGKILL');
  const fioStillRunning = !fs.existsSync(path.join(w, 'crash-end'));
  await new Promise((res) => procs[i].once('exit', res));
  fs.rmSync(sock, { force: true });
  procs[i] = await startProcess(process.execPath, args, sock, { KUMO_LOG: 'info' });
  const r = { killed: true, fioStillRunning, log: '' };
  procs[i].stderr?.on('data', (d: Buffer) => (r.log += d.toString()));
  return r;
}

describe.skipIf(skip !== null)('QEMU front-end, real Linux guest, kumo back-ends', () => {
  let r: LabResult;
  let w: string;
  let img: string;
  const procs: ChildProcess[] = [];
  let server: net.Server;
  const hostFile = randomBytes(3 * MiB + 123);
  const head = randomBytes(MiB);
  const roData = randomBytes(2 * MiB);
  let lines: string[] = [];
  let crash: Restart = { killed: false, fioStillRunning: false, log: '' };
  /** The second share's daemon log (info): its INIT line tells what L1's kernel negotiated. */
  let fs2Log = '';
  /** share3/sub: a tmpfs mounted inside the third share. */
  let subMount = '';
  let bindMount = '';
  /** The fourth share's daemon runs as uid 65534: its socket, share and checkout bind mount live here. */
  let nobodyBase = '';
  /** A loop device with 4096-byte sectors, served with direct=on as L1's /dev/vdc. */
  let loop4k = '';
  const disk4k = randomBytes(8 * MiB);
  let share4 = '';
  /** The user namespace the fourth share's daemon serves from (read while it runs). */
  let fs4UserNs = '';
  const value = (key: string): string | undefined => lines.find((l) => l.startsWith(`${key} `))?.slice(key.length + 1).trim();

  beforeAll(async () => {
    w = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-qfe-'));
    fs.mkdirSync(path.join(w, 'fs'));
    fs.writeFileSync(path.join(w, 'fs', 'from-host'), hostFile);
    img = path.join(w, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, IMAGE_MIB * MiB);
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, head, 0, head.length, 0);
    fs.closeSync(fd);

    server = net.createServer((s) => {
      let got = '';
      s.on('data', (d) => {
        got += d.toString();
        if (got.includes('\n')) s.end(got.toUpperCase());
      });
      s.on('error', () => undefined);
    });
    await new Promise<void>((res) => server.listen(0, '0.0.0.0', res));
    const port = (server.address() as net.AddressInfo).port;

    const blkSock = path.join(w, 'blk.sock');
    const netSock = path.join(w, 'net.sock');
    const fsSock = path.join(w, 'fs2.sock');
    fs.mkdirSync(path.join(w, 'share2'));
    fs.writeFileSync(path.join(w, 'share2', 'hello'), 'from the host');
    fs.writeFileSync(path.join(w, 'share2', 'hostlock'), '');
    fs.writeFileSync(path.join(w, 'share2', 'hostowned'), '');
    fs.mkdirSync(path.join(w, 'share3'));
    fs.writeFileSync(path.join(w, 'share3', 'hostowned'), '');
    fs.chownSync(path.join(w, 'share3', 'hostowned'), 4000, 4000);
    subMount = path.join(w, 'share3', 'sub');
    fs.mkdirSync(subMount);
    const mounted = spawnSync('mount', ['-t', 'tmpfs', 'kumo-lab-sub', subMount], { encoding: 'utf8' });
    if (mounted.status !== 0) throw new Error(`mount tmpfs on share3/sub: ${mounted.stderr}`);
    for (const d of ['a', 'b']) fs.mkdirSync(path.join(subMount, d));
    fs.mkdirSync(path.join(w, 'share3', 'orig', 'inner'), { recursive: true });
    bindMount = path.join(w, 'share3', 'bind');
    fs.mkdirSync(bindMount);
    const bound = spawnSync('mount', ['--bind', path.join(w, 'share3', 'orig'), bindMount], { encoding: 'utf8' });
    if (bound.status !== 0) throw new Error(`bind-mount share3/orig on share3/bind: ${bound.stderr}`);
    // --no-fork: flock execs sleep itself, so killing it ends the holder (a forked sleep outlived the run).
    const hostLock = spawn('flock', ['--no-fork', '-x', path.join(w, 'share2', 'hostlock'), 'sleep', '3600'], { stdio: 'ignore' });
    procs.push(hostLock);
    const fs2 = await startProcess(process.execPath, [bin('kumo-virtiofsd'), `--socket-path=${fsSock}`, `--shared-dir=${path.join(w, 'share2')}`,
      '--xattr', '--posix-acl', '--writeback', '--inode-file-handles=mandatory', '--killpriv-v2', '-o', 'flock'], fsSock, { KUMO_LOG: 'info' });
    fs2.stderr?.on('data', (d: Buffer) => (fs2Log += d.toString()));
    procs.push(fs2);
    const fs3Sock = path.join(w, 'fs3.sock');
    procs.push(await startProcess(process.execPath, [bin('kumo-virtiofsd'), `--socket-path=${fs3Sock}`, `--shared-dir=${path.join(w, 'share3')}`,
      '--translate-uid=map:3000:4000:1', '--translate-gid=map:3000:4000:1', '--translate-uid=forbid-guest:3001:1'], fs3Sock));
    nobodyBase = fs.mkdtempSync('/tmp/kumo-lab-nobody-');
    const nobody = nobodyDirs(nobodyBase);
    share4 = nobody.share;
    const fs4Sock = path.join(nobody.work, 'fs4.sock');
    const [nobodyCmd, ...nobodyArgs] = asNobody(nobodyBase, 'bin/kumo-virtiofsd.js', [`--socket-path=${fs4Sock}`, `--shared-dir=${share4}`]);
    procs.push(await startProcess(nobodyCmd, nobodyArgs, fs4Sock));
    fs4UserNs = fs.readlinkSync(`/proc/${fs.readFileSync(`${fs4Sock}.pid`, 'utf8').trim()}/ns/user`);
    const blkArgs = [bin('kumo-vhost-user-blk'), '--block-backend', `path=${img},socket=${blkSock},num_queues=2,queue_size=256`];
    const blkProc = procs.push(await startProcess(process.execPath, blkArgs, blkSock)) - 1;
    procs.push(await startProcess(process.execPath, [bin('kumo-vhost-user-net'), '--net-backend',
      `ip=${HOST_IP},mask=255.255.255.0,socket=${netSock},num_queues=4`], netSock));
    const roImg = path.join(w, 'ro.img');
    fs.writeFileSync(roImg, roData);
    const roSock = path.join(w, 'ro.sock');
    procs.push(await startProcess(process.execPath, [bin('kumo-vhost-user-blk'), '--block-backend',
      `path=${roImg},socket=${roSock},num_queues=2,readonly=on`], roSock));
    const backing4k = path.join(w, '4kn.img');
    fs.writeFileSync(backing4k, disk4k);
    const lo = spawnSync('losetup', ['-f', '--show', '--sector-size', '4096', backing4k], { encoding: 'utf8' });
    if (lo.status !== 0) throw new Error(`losetup --sector-size 4096: ${lo.stderr}`);
    loop4k = lo.stdout.trim();
    const directSock = path.join(w, 'direct.sock');
    procs.push(await startProcess(process.execPath, [bin('kumo-vhost-user-blk'), '--block-backend',
      `path=${loop4k},socket=${directSock},num_queues=2,direct=on`], directSock));
    const job = path.join(w, 'job.sh');
    fs.writeFileSync(job, jobScript(w, port));
    const lab = { done: false };
    const restarted = restartDuringFio(w, blkSock, blkArgs, procs, blkProc, lab);
    try {
      r = await runInLab(`sh ${job}`, {
        timeoutMs: 15 * 60_000, virtiofsd: bin('kumo-virtiofsd'), fsShares: [{ socket: fsSock, tag: 'kumo2' }, { socket: path.join(w, 'fs3.sock'), tag: 'kumo3' },
          { socket: fs4Sock, tag: 'kumo4' }],
        blkSockets: [blkSock, roSock, directSock], netSockets: [netSock],
      });
    } finally {
      lab.done = true;
    }
    crash = await restarted;
    lines = r.output.split('\n').map((l) => l.trim());
    console.log(`lab on kumo back-ends: L1 up in ${r.l1BootS.toFixed(1)} s, whole run ${r.wallS.toFixed(1)} s`);
    const failed = lines.filter((l) => l.startsWith('FAIL '));
    if (failed.length) console.log(failed.join('\n'));
  }, 16 * 60_000);

  afterAll(async () => {
    for (const p of procs) await stopProcess(p);
    if (loop4k) spawnSync('losetup', ['-d', loop4k]);
    if (subMount) spawnSync('umount', ['-l', subMount]);
    if (bindMount) spawnSync('umount', ['-l', bindMount]);
    if (nobodyBase) fs.rmSync(nobodyBase, { recursive: true, force: true });
    server?.close();
    if (w) fs.rmSync(w, { recursive: true, force: true });
  });

  it('L1 boots and runs its job from a root served by kumo-virtiofsd', () => {
    expect(r.code).toBe(0);
    expect(lines).toContain('ok node-reads-share');
  });

  it('virtio-fs: files cross in both directions intact, and every file operation behaves', () => {
    expect(value('guest-sum from-host')).toBe(sha(hostFile));
    expect(fs.readFileSync(path.join(w, 'fs', 'big.guest-sum'), 'utf8').trim()).toBe(shaFile(path.join(w, 'fs', 'big')));
    expect(fs.statSync(path.join(w, 'fs', 'big')).size).toBe(48 * MiB);
    for (const i of [1, 2, 3, 5]) expect(value(`guest-sum par${i}`), `par${i}`).toBe(shaFile(path.join(w, 'fs', `par${i}`)));
    expect(shaFile(path.join(w, 'fs', 'victim'))).toBe(value('guest-sum par4'));
    const count = spawnSync('sh', ['-c', `find ${w}/fs/tree | wc -l`], { encoding: 'utf8' }).stdout.trim();
    expect(value('guest-count tree')).toBe(count);
    for (const name of ['big-write', 'tree-copy', 'tree-diff', 'tar-roundtrip', 'hardlink', 'symlink', 'rename-over', 'chmod',
      'truncate', 'utimes', 'fallocate', 'mkfifo', 'unlink-rmdir', 'append']) {
      expect(lines, name).toContain(`ok ${name}`);
    }
    // Whole trees read through the share: contents and metadata (tar), names, sizes, modes, link targets.
    const host = (cmd: string): string => spawnSync('sh', ['-c', cmd], { encoding: 'utf8', maxBuffer: 1 << 26 }).stdout.trim();
    expect(value('guest-sum python-tar')).toBe(host("tar -C /usr/lib -cf - python3.11 | sha256sum | cut -d' ' -f1"));
    expect(value('guest-sum node-modules-list')).toBe(host(`find ${root}/node_modules -printf '%p %s %m %y %l\\n' | sort | sha256sum | cut -d' ' -f1`));
    expect(value('guest-git-head')).toBe(host(`git -C ${root} log -1 --format=%H`));
    expect(lines).toContain('ok mmap-write');
    expect(readAt(path.join(w, 'fs', 'mm'), 100, 5).toString()).toBe('hello');
    // The host sees what L1 did.
    expect(fs.statSync(path.join(w, 'fs', 'par6')).size).toBe(12345);
    expect(fs.statSync(path.join(w, 'fs', 'par5')).mode & 0o777).toBe(0o640);
    expect(fs.statSync(path.join(w, 'fs', 'par1')).nlink).toBe(2);
    expect(fs.readlinkSync(path.join(w, 'fs', 'par2.sym'))).toBe('par2');
    expect(fs.statSync(path.join(w, 'fs', 'fifo')).isFIFO()).toBe(true);
    expect(fs.readFileSync(path.join(w, 'fs', 'app'), 'utf8')).toBe('abcdef');
  });

  it('virtio-fs: a second share (namespace sandbox, inodes by file handle) keeps xattrs and data written back', () => {
    for (const name of ['share2-mount', 'share2-sees-host', 'share2-xattr', 'share2-acl', 'share2-killpriv', 'share2-flock-host', 'share2-flock-wait',
      'share2-write', 'share2-rename', 'share2-umount']) {
      expect(lines, name).toContain(`ok ${name}`);
    }
    const x = path.join(w, 'share2', 'x');
    const xattr = spawnSync('/usr/bin/python3', ['-c', `import os; print(sorted(os.listxattr('${x}')), os.getxattr('${x}', 'user.keep'))`], { encoding: 'utf8' });
    expect(xattr.stdout.trim()).toBe("['user.keep'] b'v2'");
    // --posix-acl: the host file took its mode from the default ACL L1 set, and inherited the ACL.
    expect(fs.statSync(path.join(w, 'share2', 'acl', 'inh')).mode & 0o777).toBe(0o664);
    expect(fs.statSync(path.join(w, 'share2', 'masked')).mode & 0o777).toBe(0o600);
    // L1's kernel took FUSE_HANDLE_KILLPRIV_V2 and FUSE_FLOCK_LOCKS, so the daemon, not the guest, cleared the bit.
    const init = /"flags":"0x([0-9a-f]+)"[^\n]*FUSE session initialised/.exec(fs2Log);
    expect(init, 'INIT line in the daemon log').not.toBeNull();
    const flags = BigInt('0x' + init![1]);
    expect(flags & (1n << 28n)).not.toBe(0n);
    expect(flags & (1n << 10n)).not.toBe(0n);
    expect(fs.statSync(path.join(w, 'share2', 'suid')).mode & 0o7777).toBe(0o777);
    console.log(`--killpriv-v2: host mode 0777 after the write; L1 saw ${value('guest-mode suid')} right after it`);
    expect(fs.readFileSync(path.join(w, 'wb.guest-sum'), 'utf8').trim()).toBe(shaFile(path.join(w, 'share2', 'd', 'wb')));
  });

  it('virtio-fs: a third share translates IDs, and host mounts inside it (a tmpfs, a bind mount of its own filesystem) are submounts of their own in L1', () => {
    for (const name of ['share3-mount', 'share3-idmap', 'share3-idmap-forbid', 'share3-submount', 'share3-submount-link', 'share3-bind', 'share3-umount']) {
      expect(lines, name).toContain(`ok ${name}`);
    }
    // --translate-uid/gid: L1's user 3000 made a file owned by 4000 here; a host file of 4000 showed as 3000 there.
    const f = fs.statSync(path.join(w, 'share3', 'idm', 'f'));
    expect(`${f.uid}:${f.gid}`).toBe('4000:4000');
    expect(value('guest-owner hostowned')).toBe('3000:3000');
    expect(fs.statSync(path.join(subMount, 'a', 'g')).nlink).toBe(2);
    expect(fs.readFileSync(path.join(w, 'share3', 'orig', 'f'), 'utf8')).toBe('y\n');
  });

  it('virtio-fs: a share from kumo-virtiofsd started unprivileged serves L1 from a user namespace of its own', () => {
    for (const name of ['share4-mount', 'share4-root-creates', 'share4-tree', 'share4-umount']) expect(lines, name).toContain(`ok ${name}`);
    const f = fs.statSync(path.join(share4, 'by-root'));
    expect(`${f.uid}:${f.gid}`).toBe('65534:65534');
    expect(fs.readFileSync(path.join(share4, 'by-root'), 'utf8')).toBe('hi\n');
    expect(fs4UserNs).toMatch(/^user:/);
    expect(fs4UserNs).not.toBe(fs.readlinkSync('/proc/self/ns/user'));
  });

  it('vhost-user-blk: L1 sees the disk and its queues; data, discard and write-zeroes hold', () => {
    expect(value('guest-size vda')).toBe(String((IMAGE_MIB * MiB) / 512));
    expect(value('guest-queues vda')).toBe('2');
    expect(value('guest-sum vda-head')).toBe(sha(head));
    for (const name of ['fio-verify', 'direct-write', 'discard-zeroes', 'write-zeroes']) expect(lines, name).toContain(`ok ${name}`);
    expect(sha(readAt(img, 128 * MiB, 4 * MiB))).toBe(shaFile(path.join(w, 'pattern')));
    expect(readAt(img, 160 * MiB, 8 * MiB).equals(Buffer.alloc(8 * MiB))).toBe(true);
  });

  it('vhost-user-blk: L1 writes on across a kill -9 and restart of the back-end, and verifies every block', () => {
    expect({ killed: crash.killed, fioStillRunning: crash.fioStillRunning }).toEqual({ killed: true, fioStillRunning: true });
    expect(lines).toContain('ok fio-across-restart');
  });

  it('vhost-user-blk: the restarted back-end keeps L1\'s writethrough choice, which QEMU never sends it again', () => {
    for (const name of ['vda-writethrough', 'vda-writeback']) expect(lines, name).toContain(`ok ${name}`);
    const cache = crash.log.split('\n').filter((l) => /"msg":"cache mode/.test(l)).map((l) => {
      const m = /"writeback":(\d)[^\n]*"msg":"([^"]*)"/.exec(l);
      return m ? `${m[2]}: ${m[1]}` : l;
    });
    // Restored at SET_INFLIGHT_FD, then L1 turns writeback on again after the fio.
    expect(cache).toEqual(['cache mode restored from the inflight buffer: 0', 'cache mode changed: 1']);
  });

  it('vhost-user-blk: a readonly=on disk is read-only in L1 and unchanged on the host', () => {
    expect(value('guest-ro vdb')).toBe('1');
    expect(value('guest-sum vdb')).toBe(sha(roData));
    expect(lines).toContain('ok vdb-refuses-writes');
    expect(fs.readFileSync(path.join(w, 'ro.img')).equals(roData)).toBe(true);
  });

  it('vhost-user-blk direct=on: on a 4096-byte-sector device L1 keeps 512-byte sectors, and its sector-sized writes verify', () => {
    expect(value('guest-blocks vdc')).toBe('512 4096');
    for (const bs of [512, 1536, 4096]) expect(lines, `bs ${bs}`).toContain(`ok vdc-verify-${bs}`);
    expect(lines).toContain('ok vdc-zero-ragged');
    // The sector before the zeroed range kept its data.
    expect(readAt(path.join(w, '4kn.img'), 0, 512).equals(disk4k.subarray(0, 512))).toBe(true);
    expect(readAt(path.join(w, '4kn.img'), 512, 7680).equals(Buffer.alloc(7680))).toBe(true);
  });

  it('vhost-user-blk: an ext4 made and filled by L1 is clean for the host e2fsck', () => {
    for (const name of ['mkfs', 'mount', 'ext4-fill', 'umount']) expect(lines, name).toContain(`ok ${name}`);
    const part = path.join(w, 'ext4.img');
    fs.writeFileSync(part, readAt(img, 224 * MiB, 16 * MiB));
    const fsck = spawnSync('e2fsck', ['-fn', part], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const ls = spawnSync('debugfs', ['-R', 'ls -l /tree', part], { encoding: 'utf8' });
    expect(ls.stdout).toContain('fuse');
  });

  it('vhost-user-net: L1 brings eth0 up on its queue pairs and talks TCP to the host', () => {
    expect(lines).toContain('ok eth0-up');
    expect(value('guest-queues eth0')).toBe('2');
    expect(lines).toContain('ok tcp-echo');
  });
});
