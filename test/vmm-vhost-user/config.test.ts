import { describe, expect, it } from 'vitest';
import { DiskConfig } from '../../vmm/config/disk.js';
import { FsConfig } from '../../vmm/config/fs.js';
import { MemoryConfig } from '../../vmm/config/memory.js';
import { NetConfig } from '../../vmm/config/net.js';
import { parseVhostUserDevices, validateVhostUserDevices } from '../../vmm/config/vhost-user-devices.js';

const MiB = 1 << 20;
const shared = new MemoryConfig(512 * MiB, true);

describe('--disk', () => {
  it('parses a vhost-user disk with Cloud Hypervisor defaults and JSON names', () => {
    const d = DiskConfig.parse('vhost_user=on,socket=/tmp/b.sock');
    expect(d.toJSON()).toMatchObject({ vhost_user: true, vhost_socket: '/tmp/b.sock', num_queues: 1, queue_size: 128, path: null, id: null });
    const e = DiskConfig.parse('vhost_user=true,socket=/s,num_queues=4,queue_size=256,id=root,readonly=on');
    expect(e.toJSON()).toMatchObject({ num_queues: 4, queue_size: 256, id: 'root', readonly: true });
  });
  it('refuses bad input with clear messages', () => {
    expect(() => DiskConfig.parse('vhost_user=on,socket=/s,bogus=1')).toThrow(/unknown option "bogus"/);
    expect(() => DiskConfig.parse('vhost_user=on')).toThrow(/needs socket=/);
    expect(() => DiskConfig.parse('path=/img.raw')).toThrow(/not supported.*kumo-vhost-user-blk/);
    expect(() => DiskConfig.parse('vhost_user=on,path=/img,socket=/s')).toThrow(/mutually exclusive/);
    expect(() => DiskConfig.parse('socket=/s')).toThrow(/needs vhost_user=on/);
    expect(() => DiskConfig.parse('vhost_user=on,socket=/s,queue_size=100')).toThrow(/power of two/);
    expect(() => DiskConfig.parse('vhost_user=on,socket=/s,bw_size=1000')).toThrow(/rate limiting/);
    expect(() => DiskConfig.parse('vhost_user=on,socket=/s,num_queues=0')).toThrow(/num_queues/);
    expect(() => DiskConfig.parse('vhost_user=on,socket=/s,iommu=on')).toThrow(/iommu/);
    expect(() => DiskConfig.parse('vhost_user=maybe,socket=/s')).toThrow(/vhost_user/);
  });
});

describe('--net', () => {
  it('parses a vhost-user NIC (client and server mode)', () => {
    const n = NetConfig.parse('vhost_user=on,socket=/n.sock,mac=12:34:56:78:9A:BC');
    expect(n.toJSON()).toMatchObject({ vhost_socket: '/n.sock', vhost_mode: 'Client', num_queues: 2, queue_size: 256, mac: '12:34:56:78:9a:bc' });
    const s = NetConfig.parse('vhost_user=on,socket=/n.sock,vhost_mode=server');
    expect(s.vhostMode).toBe('Server');
    expect(s.mac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    expect(parseInt(s.mac.slice(0, 2), 16) & 3).toBe(2); // locally administered unicast
  });
  it('refuses bad input', () => {
    expect(() => NetConfig.parse('tap=tap0')).toThrow(/not supported.*kumo-vhost-user-net/);
    expect(() => NetConfig.parse('vhost_user=on')).toThrow(/needs socket=/);
    expect(() => NetConfig.parse('vhost_user=on,socket=/s,vhost_mode=both')).toThrow(/vhost_mode/);
    expect(() => NetConfig.parse('vhost_user=on,socket=/s,mac=01:00:00:00:00:01')).toThrow(/unicast/);
    expect(() => NetConfig.parse('vhost_user=on,socket=/s,mac=zz')).toThrow(/mac/);
    expect(() => NetConfig.parse('vhost_user=on,socket=/s,num_queues=4')).toThrow(/num_queues=4 is not supported/);
    expect(() => NetConfig.parse('vhost_user=on,socket=/s,ops_size=10')).toThrow(/rate limiting/);
  });
});

describe('--fs', () => {
  it('parses with Cloud Hypervisor defaults', () => {
    expect(FsConfig.parse('tag=myfs,socket=/f.sock').toJSON()).toEqual({
      tag: 'myfs', socket: '/f.sock', num_queues: 1, queue_size: 1024, id: null, pci_segment: 0, pci_device_id: null,
    });
  });
  it('refuses bad input', () => {
    expect(() => FsConfig.parse('socket=/f')).toThrow(/missing required option "tag"/);
    expect(() => FsConfig.parse('tag=x')).toThrow(/missing required option "socket"/);
    expect(() => FsConfig.parse(`tag=${'a'.repeat(37)},socket=/f`)).toThrow(/1 to 36 bytes/);
    expect(FsConfig.parse(`tag=${'a'.repeat(36)},socket=/f`).tag.length).toBe(36);
    expect(() => FsConfig.parse('tag=x,socket=/f,queue_size=3')).toThrow(/power of two/);
    expect(() => FsConfig.parse('tag=x,socket=/f,pci_segment=2')).toThrow(/pci_segment/);
  });
});

describe('VM-level rules', () => {
  it('vhost-user devices need shared memory or hugepages', () => {
    const d = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/a'] });
    expect(() => validateVhostUserDevices(d, new MemoryConfig(512 * MiB, false))).toThrow(/shared=on/);
    validateVhostUserDevices(d, new MemoryConfig(512 * MiB, false, true));
    validateVhostUserDevices(parseVhostUserDevices({}), new MemoryConfig(512 * MiB, false));
  });
  it('assigns Cloud Hypervisor style ids and refuses duplicates', () => {
    const d = parseVhostUserDevices({
      disk: ['vhost_user=on,socket=/a', 'vhost_user=on,socket=/b,id=data'],
      net: ['vhost_user=on,socket=/c'],
      fs: ['tag=t,socket=/d'],
    });
    validateVhostUserDevices(d, shared);
    expect([...d.disks, ...d.net, ...d.fs].map((c) => c.id)).toEqual(['_disk0', 'data', '_net2', '_fs3']);
    const dup = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/a,id=x'], fs: ['tag=t,socket=/d,id=x'] });
    expect(() => validateVhostUserDevices(dup, shared)).toThrow(/"x" is used twice/);
    const sock = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/a'], fs: ['tag=t,socket=/a'] });
    expect(() => validateVhostUserDevices(sock, shared)).toThrow(/two devices/);
  });
});

describe('device ids', () => {
  it('generates ids for a disk, a NIC and a share, and validating again keeps them', () => {
    const d = parseVhostUserDevices({
      disk: ['vhost_user=on,socket=/b'], net: ['vhost_user=on,socket=/n'], fs: ['tag=t,socket=/f'],
    });
    validateVhostUserDevices(d, shared);
    validateVhostUserDevices(d, shared);
    expect([...d.disks, ...d.net, ...d.fs].map((c) => c.id)).toEqual(['_disk0', '_net1', '_fs2']);
  });
  it('checks pci_device_id: 1 to 31, one device per slot', () => {
    expect(() => parseVhostUserDevices({ disk: ['vhost_user=on,socket=/b,pci_device_id=0'] })).toThrow(/pci_device_id must be between 1 and 31 \(0 is the host bridge\)/);
    const two = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/b,pci_device_id=5,id=a'], fs: ['tag=t,socket=/f,pci_device_id=5,id=b'] });
    expect(() => validateVhostUserDevices(two, shared)).toThrow(/pci_device_id=5 is given to both "a" and "b"/);
    expect(parseVhostUserDevices({ net: ['vhost_user=on,socket=/n,pci_device_id=9'] }).net[0].toJSON().pci_device_id).toBe(9);
  });

  it('takes ids with one leading "_" (Cloud Hypervisor reserves "__"), but not one another device is generated', () => {
    const ok = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/b,id=_mydisk'] });
    validateVhostUserDevices(ok, shared);
    expect(ok.disks[0].id).toBe('_mydisk');
    const clash = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/b,id=_fs1'], fs: ['tag=t,socket=/f'] });
    expect(() => validateVhostUserDevices(clash, shared)).toThrow(/"_fs1" is used twice \(given to one device, generated for another\)/);
    const reserved = parseVhostUserDevices({ disk: ['vhost_user=on,socket=/b,id=__x'] });
    expect(() => validateVhostUserDevices(reserved, shared)).toThrow(/reserved/);
  });
});
