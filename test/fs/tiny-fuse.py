#!/usr/bin/env python3
"""Host FUSE file systems for the tests, spoken over /dev/fuse with no library. Usage: tiny-fuse.py MOUNTPOINT MODE.
Mounts, then serves in the background until unmounted. MODE:
- long-names (test/fs/long-names.test.ts): a root directory holding a file whose name is 300 bytes (Linux FUSE takes
  names up to 1024) and a file "short";
- short-reads (test/fs/short-reads.test.ts): a file "big" of 2 MiB (byte i is (i % 4096 + i // 4096) & 0xff) opened
  with FOPEN_DIRECT_IO whose READs answer at most 4 KiB each, as network and synthetic file systems may: the kernel
  then returns short reads before EOF."""
import ctypes, os, struct, sys, errno
target = sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else 'long-names'
LONG = ('é' * 150).encode()  # 300 bytes
SHORT = b'short'
if MODE == 'short-reads':
    ROW = bytes(range(256)) * 17
    CONTENT = b''.join(ROW[p % 256:p % 256 + 4096] for p in range(512))
    FILES = [b'big']
    OPEN_FLAGS, READ_MAX = 1, 4096  # FOPEN_DIRECT_IO
else:
    CONTENT = b'hello\n'
    FILES = [LONG, SHORT]
    OPEN_FLAGS, READ_MAX = 0, 1 << 30
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('/dev/fuse', os.O_RDWR)
opts = f'fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other'.encode()
if libc.mount(b'longfs', target.encode(), b'fuse', 0, opts) != 0:
    e = ctypes.get_errno(); print('mount failed', os.strerror(e)); sys.exit(1)
print('mounted', flush=True)
if os.fork() != 0:
    os._exit(0)
# Let go of the caller's pipes: spawnSync waits for them to close.
null = os.open(os.devnull, os.O_RDWR)
for std in (0, 1, 2):
    os.dup2(null, std)
def attr(ino):
    if ino == 1:
        mode, size, nlink = 0o40755, 4096, 2
    else:
        mode, size, nlink = 0o100644, len(CONTENT), 1
    return struct.pack('<QQQQQQIIIIIIIIII', ino, size, 1, 0, 0, 0, 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)
def entry(ino):
    return struct.pack('<QQQQII', ino, 0, 1, 1, 0, 0) + attr(ino)
names = {name: 2 + i for i, name in enumerate(FILES)}
def dirent(ino, off, typ, name):
    b = struct.pack('<QQII', ino, off, len(name), typ) + name
    return b + b'\0' * ((8 - len(b) % 8) % 8)
while True:
    try:
        req = os.read(fd, 1 << 20)
    except OSError as e:
        if e.errno == errno.ENODEV: break
        if e.errno in (errno.EINTR, errno.ENOENT): continue
        raise
    ln, op, uniq, nodeid = struct.unpack_from('<IIQQ', req, 0)
    body = req[40:ln]
    err, out = 0, b''
    if op == 26:  # INIT
        major, minor = struct.unpack_from('<II', body, 0)
        out = struct.pack('<IIIIHHIIHHI', 7, 31, 65536, 0, 16, 12, 65536, 1, 0, 0, 0) + b'\0' * 28
    elif op in (2, 42, 36):  # FORGET, BATCH_FORGET, INTERRUPT
        continue
    elif op == 1:  # LOOKUP
        name = body.split(b'\0', 1)[0]
        if nodeid == 1 and name in names: out = entry(names[name])
        else: err = errno.ENOENT
    elif op == 3:  # GETATTR
        out = struct.pack('<QII', 1, 0, 0) + attr(nodeid)
    elif op == 27:  # OPENDIR
        out = struct.pack('<QII', 0, 0, 0)
    elif op == 14:  # OPEN
        out = struct.pack('<QII', 0, OPEN_FLAGS, 0)
    elif op == 28:  # READDIR
        fh, off, size = struct.unpack_from('<QQI', body, 0)
        ents = [dirent(1, 1, 4, b'.'), dirent(1, 2, 4, b'..')] + [dirent(2 + i, 3 + i, 8, n) for i, n in enumerate(FILES)]
        out = b''.join(ents[off:])
        if len(out) > size: out = b''.join(ents[off:off+1])
    elif op == 15:  # READ
        fh, off, size = struct.unpack_from('<QQI', body, 0)
        out = CONTENT[off:off + min(size, READ_MAX)]
    elif op in (29, 18, 25):  # RELEASEDIR, RELEASE, FLUSH
        out = b''
    elif op == 17:  # STATFS
        out = struct.pack('<QQQQQIII', 0, 0, 0, 0, 0, 4096, 1024, 4096) + b'\0' * 28
    elif op == 38:
        out = b''
    else:
        err = errno.ENOSYS
    rep = struct.pack('<IiQ', 16 + (0 if err else len(out)), -err, uniq) + (b'' if err else out)
    try:
        os.write(fd, rep)
    except OSError:
        pass
