import { describe, expect, it } from 'vitest';
import { GuestFds } from '../../backends/virtiofsd/guest-fds.js';
import { InodeTable } from '../../backends/virtiofsd/inodes.js';
import * as fs from '../../protocol/sys/fs.js';

const O_PATH = 0o10000000;
const S_IFREG = 0o100000;
const pathFd = (): number => fs.openat(fs.AT_FDCWD, '/tmp', O_PATH);

describe('InodeTable.fsType', () => {
  it('asks once per (mount, dev) while inodes there are held, and again after the last one went (dev numbers are reused)', () => {
    const t = new InodeTable(new GuestFds(1000));
    t.setRoot(pathFd(), 1, 1n, 1, 0o040000);
    let probes = 0;
    const probe = (): number => ++probes;
    const a = t.add(pathFd(), 7, 10n, 5, S_IFREG);
    const b = t.add(pathFd(), 7, 11n, 5, S_IFREG);
    expect(t.fsType(a, probe)).toBe(1);
    expect(t.fsType(b, probe)).toBe(1);
    expect(probes).toBe(1);
    t.forget(a.nodeid, 1);
    expect(t.fsType(b, probe)).toBe(1);
    t.forget(b.nodeid, 1);
    // Unmounted; another file system mounted there gets the same mount and dev numbers.
    const c = t.add(pathFd(), 7, 10n, 5, S_IFREG);
    expect(t.fsType(c, probe)).toBe(2);
    expect(probes).toBe(2);
    t.clear();
  });
});
