import { fstatSync } from 'node:fs';
import { KumoError } from '../../protocol/errors.js';
import { ioctl, SysError } from '../../protocol/sys/libc.js';
import { blockDeviceSize, directIoAlignment, EXT4_SUPER_MAGIC, fcntlLock, fstatfs, F_OFD_SETLK, F_RDLCK, F_WRLCK, RAMFS_MAGIC, TMPFS_MAGIC } from '../../protocol/sys/fs.js';
import { openFile, closeQuiet, preadvRaw, setNonBlocking, O_RDONLY, O_RDWR, O_CLOEXEC, O_DIRECT, O_NONBLOCK } from '../../protocol/sys/fd.js';
import { mapAnonymous } from '../../protocol/sys/mem.js';
import { IoVecArena } from '../../protocol/sys/uring.js';

export const SECTOR_SIZE = 512;
const BLKSSZGET = 0x1268;
const BLKROGET = 0x125e;
const EAGAIN = 11;
const EACCES = 13;

export class ImageError extends KumoError {}

export interface ImageOptions {
  readonly: boolean;
  direct: boolean;
  /** false: no OFD lock (locking=off), for a second process that must open an image another holds. Default true. */
  lock?: boolean;
}

/**
 * An opened raw image (regular file or block device) holding an OFD lock: a write lock for
 * read-write images, a read lock for readonly ones, so no two processes write one image
 * (and QEMU/Cloud Hypervisor's whole-file OFD locks conflict with ours).
 */
/** The largest image served: every byte offset in it is an exact JavaScript number. */
const MAX_IMAGE_BYTES = 2n ** 53n;

export class DiskImage {
  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly size: number,
    readonly readonly: boolean,
    readonly direct: boolean,
    readonly isBlockDevice: boolean,
    /**
     * tmpfs/ramfs, buffered: reads and writes are memory copies that never wait for a device, and
     * io_uring has no inline (non-blocking) path for them here, so each would take an io-wq round
     * trip (measured 66 µs for a 4 KiB read, against about 1 µs for the copy itself).
     */
    readonly memoryBacked: boolean,
    /**
     * ext4, buffered: the filesystem refuses non-blocking buffered writes (IOCB_NOWAIT), so io_uring hands
     * every write to an io-wq worker, and io-wq runs one file's writes one at a time.
     */
    readonly writesPunted: boolean,
    /**
     * O_DIRECT: the block (512 or 4096 bytes) that offsets, lengths and buffers must keep to, probed as
     * Cloud Hypervisor does; requests off it go through PooledIo. 0 without O_DIRECT.
     */
    readonly alignment: number,
    /** The device's logical block (BLKSSZGET) for a block device, 512 for a file: fallocate takes whole ones. */
    readonly logicalBlock: number,
  ) {}

  get sectors(): number {
    return this.size / SECTOR_SIZE;
  }

  static open(path: string, opts: ImageOptions): DiskImage {
    // O_NONBLOCK until the type is known: opening a FIFO would otherwise wait for a writer, for good.
    const flags = (opts.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK | (opts.direct ? O_DIRECT : 0);
    let fd: number;
    try {
      fd = openFile(path, flags);
    } catch (e) {
      const code = e instanceof SysError ? e.code : String(e);
      throw new ImageError(`cannot open image ${path}: ${code}`, { path, ...opts, cause: code });
    }
    try {
      const st = fstatSync(fd, { bigint: true });
      let exact: number | bigint;
      let logicalBlock = SECTOR_SIZE;
      if (st.isBlockDevice()) {
        exact = blockDeviceSize(fd);
        const b = Buffer.alloc(8);
        ioctl(fd, BLKSSZGET, b);
        logicalBlock = b.readInt32LE(0);
        // A read-only device opens O_RDWR all the same, and every write would then fail IOERR.
        ioctl(fd, BLKROGET, b);
        if (!opts.readonly && b.readInt32LE(0) !== 0) throw new ImageError(`block device ${path} is read-only: serve it with readonly=on`, { path });
      } else if (st.isFile()) {
        exact = st.size;
      } else {
        throw new ImageError(`image ${path} is neither a regular file nor a block device`, { path });
      }
      setNonBlocking(fd, false);
      const format = formatOf(fd);
      if (format !== null) {
        // Served raw, a guest would see the container's bytes and, writing, destroy the image.
        throw new ImageError(`image ${path} is a ${format} image: only raw images are served (qemu-img convert -O raw ${path} OUT)`, { path, format });
      }
      // Offsets are exact JavaScript numbers up to 2^53 (8 PiB); a larger image would be served wrong.
      if (exact > MAX_IMAGE_BYTES) {
        throw new ImageError(`image ${path} is larger than 8 PiB (2^53 bytes), the most this back-end serves`, { path, size: String(exact) });
      }
      const size = Number(exact);
      if (size % SECTOR_SIZE !== 0) {
        throw new ImageError(`image ${path} size ${size} is not a multiple of ${SECTOR_SIZE} bytes`, { path, size });
      }
      if (opts.lock !== false) lock(fd, path, opts.readonly ? F_RDLCK : F_WRLCK);
      // A block device's fstatfs names the file system its node lives on (devtmpfs reads as tmpfs), not the device.
      const fsType = st.isBlockDevice() || opts.direct ? 0 : fstatfs(fd).type;
      const memoryBacked = fsType === TMPFS_MAGIC || fsType === RAMFS_MAGIC;
      const writesPunted = fsType === EXT4_SUPER_MAGIC;
      const alignment = opts.direct ? directAlignment(fd, size) : 0;
      return new DiskImage(path, fd, size, opts.readonly, opts.direct, st.isBlockDevice(), memoryBacked, writesPunted, alignment, logicalBlock);
    } catch (e) {
      closeQuiet(fd);
      throw e;
    }
  }

  close(): void {
    closeQuiet(this.fd);
  }
}

function lock(fd: number, path: string, type: number): void {
  try {
    // Whole file (len 0); pid must be 0 for OFD locks.
    fcntlLock(fd, F_OFD_SETLK, { type, whence: 0, start: 0n, len: 0n, pid: 0 });
  } catch (e) {
    if (e instanceof SysError && (e.errno === EAGAIN || e.errno === EACCES)) {
      throw new ImageError(`image ${path} is locked by another process (locking=off serves it all the same, as a live migration's destination must)`, { path, code: e.code });
    }
    if (e instanceof SysError) {
      // ENOLCK (NFS without lockd), EINVAL/EOPNOTSUPP (no OFD locks): the image cannot be kept from a second writer.
      throw new ImageError(`cannot lock image ${path}: its file system refuses locks (${e.code}); kumo-vhost-user-blk locks ` +
        'every image so that two processes never write one (locking=off serves it unlocked)', { path, code: e.code });
    }
    throw e;
  }
}

/**
 * Reads `len` bytes at `at` into a page-aligned buffer, `skew` bytes into it (O_DIRECT may be on), and hands
 * the count (or -errno) and the bytes to `use`.
 */
function alignedRead<T>(fd: number, len: number, at: number, skew: number, use: (n: number, bytes: Uint8Array) => T): T {
  const buf = mapAnonymous(8192);
  const iov = new IoVecArena(1, 1);
  try {
    iov.set(0, 0, Number(buf.ptr) + skew, len);
    return use(preadvRaw(fd, iov.slotAddress(0), 1, at), buf.bytes.subarray(skew, skew + len));
  } finally {
    iov.free();
    buf.unmap();
  }
}

/**
 * The smallest block O_DIRECT accepts on this file: what statx says (STATX_DIOALIGN), else a 512-byte read at 512
 * into a buffer that is 512- but not 4096-aligned, else 4096 (a 4096-byte sector device, or a file system that
 * wants pages). The read must lie inside the file: at its end the kernel answers 0 without checking alignment, so an
 * image of less than 1 KiB is probed at 0 (the buffer's skew still tells).
 */
function directAlignment(fd: number, size: number): number {
  // The kernel's own answer where it gives one: a probe inside a hole or an unwritten extent (a fresh image) is
  // answered without the alignment check, and took a 4096-byte-sector disk for 512.
  const k = directIoAlignment(fd);
  if (k !== null && k.offset > 0) return Math.max(SECTOR_SIZE, k.offset, k.memory);
  if (alignedRead(fd, 512, size >= 1024 ? 512 : 0, 512, (n) => n >= 0)) return 512;
  return 4096;
}

/** Image containers Cloud Hypervisor opens and a raw back-end must not: their magic at byte 0. */
const CONTAINERS: [string, Buffer][] = [
  ['qcow2', Buffer.from([0x51, 0x46, 0x49, 0xfb])],
  ['vhdx', Buffer.from('vhdxfile', 'latin1')],
];

/** The container format the image starts with, or null for raw. */
function formatOf(fd: number): string | null {
  return alignedRead(fd, 4096, 0, 0, (n, bytes) => {
    const hit = CONTAINERS.find(([, magic]) => n >= magic.length && Buffer.from(bytes.subarray(0, magic.length)).equals(magic));
    return hit?.[0] ?? null;
  });
}
