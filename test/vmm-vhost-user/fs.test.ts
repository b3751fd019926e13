import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { FuseClient, FUSE_ROOT_ID, type FuseTransport } from '../../protocol/fuse/index.js';
import { bits, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX } from '../../protocol/virtio/features.js';
import { FsConfig as FsCfgLayout } from '../../protocol/virtio/fs.js';
import { FsConfig } from '../../vmm/config/fs.js';
import { MemoryConfig } from '../../vmm/config/memory.js';
import { validateVhostUserDevices } from '../../vmm/config/vhost-user-devices.js';
import { attachVhostUserDevices, vhostUserDevices, type VhostUserAttachment } from '../../vmm/vhost-user/index.js';
import { GuestDriver, MiB, startProcess, stopProcess, TestVm } from './harness.js';

const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const SLOT = 256 * 1024;

/** FUSE over the guest driver's virtio-fs queues: 0 = hiprio, 1 = requests. */
class GuestFuseTransport implements FuseTransport {
  private readonly req: number;
  private readonly rep: number;
  constructor(private readonly g: GuestDriver) {
    this.req = g.vm.alloc.allocOrThrow(SLOT, 4096);
    this.rep = g.vm.alloc.allocOrThrow(SLOT, 4096);
  }
  async call(request: Uint8Array, replySize: number, hiprio = false): Promise<Uint8Array> {
    const q = this.g.queues[hiprio ? 0 : 1];
    const mem = this.g.vm.mem;
    mem.write(this.req, request);
    q.dq.add([{ addr: this.req, len: request.length }], replySize ? [{ addr: this.rep, len: replySize }] : [], 0);
    q.dq.publish();
    this.g.kick(q);
    const [u] = await this.g.waitUsed(q);
    const out = new Uint8Array(Math.min(u.len, replySize));
    mem.read(this.rep, out);
    return out;
  }
}

describe.skipIf(!existsSync(VIRTIOFSD))('virtio-fs through the virtio-pci model (QEMU C virtiofsd)', () => {
  let dir: string;
  let child: ChildProcess | null = null;
  let att: VhostUserAttachment | null = null;
  let vm: TestVm | null = null;

  afterEach(async () => {
    att?.close();
    vm?.close();
    await stopProcess(child);
    att = null;
    vm = null;
    child = null;
    rmSync(dir, { recursive: true, force: true });
  });

  it('FUSE INIT and LOOKUP of a known file through the backend', async () => {
    if (process.getuid?.() !== 0) {
      console.log('skipped: virtiofsd needs root');
      return;
    }
    dir = mkdtempSync(join(tmpdir(), 'kumo-vmm-fs-'));
    const shared = join(dir, 'shared');
    const sock = join(dir, 'fs.sock');
    rmSync(shared, { force: true, recursive: true });
    (await import('node:fs')).mkdirSync(shared);
    writeFileSync(join(shared, 'hello.txt'), 'hello from the host\n');
    child = await startProcess(VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${shared}`, '-o', 'sandbox=chroot', '-o', 'cache=none'], sock);

    const fs = FsConfig.parse(`tag=myfs,socket=${sock}`);
    const devices = { disks: [], net: [], fs: [fs] };
    validateVhostUserDevices(devices, new MemoryConfig(512 * MiB, false, true));
    vm = new TestVm(64 * MiB);
    const v = vm;
    att = await attachVhostUserDevices(devices, v.callFd, { retryForMs: 5000 });
    v.build(vhostUserDevices(att.specs, att.links));
    const g = new GuestDriver(v, 0);
    expect(v.p.virtio[0].numQueues).toBe(2);
    expect(new TextDecoder().decode(g.configBytes(FsCfgLayout.tag, 4))).toBe('myfs');
    expect(g.config(FsCfgLayout.num_request_queues, 4)).toBe(1);
    g.enableMsix();
    g.start(bits(VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX), [128, 128]);

    const fuse = new FuseClient(new GuestFuseTransport(g));
    const init = await fuse.init();
    expect(init.major).toBe(7);
    const e = await fuse.lookup(FUSE_ROOT_ID, 'hello.txt');
    expect(e.attr.size).toBe('hello from the host\n'.length);
    const h = await fuse.open(e.nodeid, 0);
    const data = await fuse.read(e.nodeid, h.fh, 0, 4096);
    expect(new TextDecoder().decode(data)).toBe('hello from the host\n');
    g.reset();
    expect(att.links.get('_fs0')!.activeQueues).toEqual([]);
  }, 60_000);
});
