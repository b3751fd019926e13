import { describe, it, expect } from 'vitest';
import { memfdCreate, ftruncate, mapFd } from '../../protocol/sys/mem.js';
import {
  eventfd, eventfdRead, eventfdWrite, close, IoVecList, writev, readv, pipe2, read, write, setNonBlocking,
} from '../../protocol/sys/fd.js';
import { Epoll, EPOLLIN } from '../../protocol/sys/epoll.js';
import { socketPair, sendMsg, recvMsg, recvMsgAsync, unixListen, unixConnect, accept } from '../../protocol/sys/socket.js';
import { SysError, addressOf } from '../../protocol/sys/libc.js';
import { gettid, setThreadName } from '../../protocol/sys/proc.js';
import { umask } from '../../protocol/sys/fs.js';
import { existsSync, readFileSync, readdirSync, mkdtempSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

describe('protocol/sys', () => {
  it('shares a memfd between two mappings', () => {
    const fd = memfdCreate('t');
    ftruncate(fd, 8192);
    const a = mapFd(fd, 8192);
    const b = mapFd(fd, 4096, 4096);
    a.bytes[4096 + 7] = 0x5a;
    expect(b.bytes[7]).toBe(0x5a);
    a.unmap();
    b.unmap();
    close(fd);
  });

  it('reports failures as SysError with the call and errno name', () => {
    expect(() => close(987654)).toThrowError(SysError);
    try {
      close(987654);
    } catch (e) {
      expect((e as SysError).code).toBe('EBADF');
      expect((e as SysError).call).toBe('close');
    }
  });

  it('eventfd counts and epoll reports it with the token', () => {
    const efd = eventfd();
    const ep = new Epoll();
    ep.add(efd, EPOLLIN, 77);
    expect(ep.wait(0)).toBe(0);
    eventfdWrite(efd, 3);
    eventfdWrite(efd);
    expect(ep.wait(100)).toBe(1);
    expect(ep.tokens[0]).toBe(77);
    expect(eventfdRead(efd)).toBe(4);
    expect(eventfdRead(efd)).toBe(0);
    ep.close();
    close(efd);
  });

  it('waitAsync leaves the event loop running', async () => {
    const efd = eventfd();
    const ep = new Epoll();
    ep.add(efd, EPOLLIN, 5);
    const p = ep.waitAsync(2000);
    setTimeout(() => eventfdWrite(efd), 20);
    expect(await p).toBe(1);
    expect(ep.tokens[0]).toBe(5);
    ep.close();
    close(efd);
  });

  it('passes fds over SCM_RIGHTS', async () => {
    const [a, b] = socketPair();
    const mfd = memfdCreate('shared');
    ftruncate(mfd, 4096);
    const efd = eventfd();
    sendMsg(a, Buffer.from('hello'), [mfd, efd]);
    const buf = Buffer.alloc(64);
    const r = recvMsg(b, buf);
    expect(r.n).toBe(5);
    expect(buf.subarray(0, 5).toString()).toBe('hello');
    expect(r.fds).toHaveLength(2);
    const m1 = mapFd(mfd, 4096);
    const m2 = mapFd(r.fds[0], 4096);
    m1.bytes[0] = 9;
    expect(m2.bytes[0]).toBe(9);
    eventfdWrite(r.fds[1], 2);
    expect(eventfdRead(efd)).toBe(2);
    const pending = recvMsgAsync(b, buf);
    sendMsg(a, Buffer.from('x'));
    expect((await pending).n).toBe(1);
    [a, b, mfd, efd, ...r.fds].forEach(close);
  });

  it('listens and connects on a unix path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-sock-'));
    const path = join(dir, 's');
    const l = unixListen(path);
    const c = unixConnect(path);
    const s = accept(l);
    sendMsg(c, Buffer.from('ping'));
    const buf = Buffer.alloc(8);
    expect(recvMsg(s, buf).n).toBe(4);
    close(c);
    expect(recvMsg(s, buf).n).toBe(0);
    [l, s].forEach(close);
    expect(() => unixConnect(join(dir, 'none'))).toThrowError(/ENOENT/);
    rmSync(dir, { recursive: true });
  });

  it('gives the listening socket the mode asked for whatever the umask, and leaves the umask alone', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-sock-'));
    const old = umask(0);
    try {
      const l = unixListen(join(dir, 's'), 16, 0o700);
      expect(statSync(join(dir, 's')).mode & 0o777).toBe(0o700);
      close(l);
      expect(umask(0)).toBe(0);
      const m = unixListen(join(dir, 'm'));
      expect(statSync(join(dir, 'm')).mode & 0o777).toBe(0o777);
      close(m);
      expect(readdirSync(dir).sort()).toEqual(['m', 's']); // no staging name left behind
    } finally {
      umask(old);
      rmSync(dir, { recursive: true });
    }
  });

  it('a front-end connecting the moment the socket path appears is never refused (bind and listen were apart)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kumo-sock-'));
    const path = join(dir, 's');
    const done = join(dir, 'done');
    // Connects in a loop, counting refusals (ENOENT: not there yet, try again), until it has connected 20 times or
    // 20 s have passed, then says so in a file. The listener cycles until that file appears, so a child that is slow
    // to start on a loaded host still gets its tries (CI once saw ok = 0 when the listener stopped after 3.2 s).
    const client = `const net = require('node:net'); const fs = require('node:fs'); let refused = 0, ok = 0;
      const end = Date.now() + 20000;
      const once = () => { if (ok >= 20 || Date.now() > end) {
          fs.writeFileSync(${JSON.stringify(done)} + '.tmp', JSON.stringify({ refused, ok }));
          fs.renameSync(${JSON.stringify(done)} + '.tmp', ${JSON.stringify(done)}); return; }
        const c = net.connect(${JSON.stringify(path)}); c.on('connect', () => { ok++; c.destroy(); once(); });
        c.on('error', (e) => { if (e.code === 'ECONNREFUSED') refused++; setImmediate(once); }); };
      once();`;
    const child = spawn(process.execPath, ['-e', client], { stdio: ['ignore', 'inherit', 'inherit'] });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const pause = new Int32Array(new SharedArrayBuffer(4));
    let result = '';
    try {
      for (const end = Date.now() + 30_000; Date.now() < end && !existsSync(done); ) {
        const l = unixListen(path, 16, 0o700);
        unlinkSync(path); // gone before it stops listening: a refusal can only come from unixListen's own window
        // A connect that found the path just before the unlink completes against the listener (else: refused at close).
        Atomics.wait(pause, 0, 0, 5);
        close(l);
      }
      if (existsSync(done)) result = readFileSync(done, 'utf8');
    } finally {
      if (!result) child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
    return exited.then(() => {
      expect(result, 'the client never reported').not.toBe('');
      const r = JSON.parse(result) as { refused: number; ok: number };
      expect(r.ok).toBeGreaterThan(0);
      expect(r.refused).toBe(0);
    });
  }, 45_000);

  it('writev/readv move data through native iovecs', () => {
    const [r, w] = pipe2();
    const x = Buffer.from('abc');
    const y = Buffer.from('defg');
    const iov = new IoVecList(4);
    iov.push(addressOf(x), 3);
    iov.push(Number(addressOf(y)), 4);
    expect(writev(w, iov)).toBe(7);
    const o1 = Buffer.alloc(2);
    const o2 = Buffer.alloc(5);
    iov.clear();
    iov.push(addressOf(o1), 2);
    iov.push(addressOf(o2), 5);
    expect(readv(r, iov)).toBe(7);
    expect(Buffer.concat([o1, o2]).toString()).toBe('abcdefg');
    setNonBlocking(r, true);
    expect(read(r, o1)).toBe(-1);
    expect(write(w, x)).toBe(3);
    [r, w].forEach(close);
  });

  it('splitInto cuts an iovec list at a byte count, inside an entry or on its edge', () => {
    const list = new IoVecList(4);
    list.push(0x1000, 100);
    list.push(0x9000, 50);
    list.push(0x20000, 10);
    const head = new IoVecList(4);
    const tail = new IoVecList(4);
    const entries = (l: IoVecList): [number, number][] => Array.from({ length: l.count }, (_, i) => [l.address(i), l.length(i)]);
    list.splitInto(120, head, tail);
    expect(entries(head)).toEqual([[0x1000, 100], [0x9000, 20]]);
    expect(entries(tail)).toEqual([[0x9000 + 20, 30], [0x20000, 10]]);
    expect(head.totalLength + tail.totalLength).toBe(160);
    list.splitInto(100, head, tail);
    expect(entries(head)).toEqual([[0x1000, 100]]);
    expect(entries(tail)).toEqual([[0x9000, 50], [0x20000, 10]]);
    list.splitInto(0, head, tail);
    expect(head.count).toBe(0);
    expect(tail.totalLength).toBe(160);
  });

  it('names the thread', () => {
    setThreadName('kumo-test');
    expect(readFileSync(`/proc/self/task/${gettid()}/comm`, 'utf8').trim()).toBe('kumo-test');
  });
});

describe('statxRaw', () => {
  it('leaves the same struct stat as fstatat (devices and times included) and adds the mount ID', async () => {
    const fs = await import('../../protocol/sys/fs.js');
    const dir = mkdtempSync(join(tmpdir(), 'kumo-statx-'));
    try {
      const root = fs.openat(fs.AT_FDCWD, '/', 0o10000000 /* O_PATH */);
      // A character device (rdev), a directory, a file of some blocks, a symlink (not followed), procfs (another mount).
      for (const path of ['dev/null', 'dev', 'proc', 'proc/self', join(dir, 'f').slice(1)]) {
        if (path.endsWith('/f')) (await import('node:fs')).writeFileSync('/' + path, Buffer.alloc(70_000, 1));
        const name = fs.cstr(path);
        expect(fs.fstatatRaw(root, name)).toBe(0);
        const want = Buffer.from(fs.rawStat.subarray(0, 120));
        expect(fs.statxRaw(root, name)).toBe(0);
        // atime may move between the two calls only if something reads the file meanwhile; nothing does.
        expect(Buffer.from(fs.rawStat.subarray(0, 120)).equals(want), path).toBe(true);
      }
      const mountIdOf = (path: string): number => (fs.statxRaw(root, fs.cstr(path)), fs.rawMountId());
      const mountIds = new Map(readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\n').map((l) => [l.split(' ')[4], Number(l.split(' ')[0])]));
      expect(mountIdOf('proc')).toBe(mountIds.get('/proc'));
      expect(mountIdOf('.')).toBe(mountIds.get('/'));
      expect(mountIdOf('.')).not.toBe(mountIdOf('proc'));
      expect(fs.statxRaw(root, fs.cstr('no/such/name'))).toBe(-2);
      close(root);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('openPathOfRaw', () => {
  it('gives an O_PATH, close-on-exec fd on the very file a write-only fd is open on, and -errno for a bad fd', async () => {
    const fs = await import('../../protocol/sys/fs.js');
    const { fcntl, fileStatusFlags, O_PATH, O_WRONLY, O_CREAT } = await import('../../protocol/sys/fd.js');
    const dir = mkdtempSync(join(tmpdir(), 'kumo-opath-'));
    try {
      const wfd = fs.openat(fs.AT_FDCWD, join(dir, 'f'), O_WRONLY | O_CREAT, 0o600);
      const pfd = fs.openPathOfRaw(wfd);
      expect(pfd).toBeGreaterThanOrEqual(0);
      expect(pfd).not.toBe(wfd);
      expect(fileStatusFlags(pfd) & O_PATH).toBe(O_PATH);
      expect(fcntl(pfd, 1 /* F_GETFD */, 0) & 1 /* FD_CLOEXEC */).toBe(1);
      const ino = (fd: number): string => (expect(fs.fstatRaw(fd)).toBe(0), fs.rawStat.readBigUInt64LE(8).toString());
      expect(ino(pfd)).toBe(ino(wfd));
      expect(ino(pfd)).toBe(String(statSync(join(dir, 'f')).ino));
      // An O_PATH fd moves no data.
      expect(() => write(pfd, Buffer.from('x'))).toThrow(/EBADF/);
      close(pfd);
      close(wfd);
      expect(fs.openPathOfRaw(wfd)).toBe(-9 /* EBADF */);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
