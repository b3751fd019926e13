import { fstatSync } from 'node:fs';
import { KumoError } from '../../protocol/errors.js';
import { libc, koffi, ioctl, SysError } from '../../protocol/sys/libc.js';
import { openFile, closeQuiet, O_RDONLY, O_RDWR, O_CLOEXEC, O_DIRECT } from '../../protocol/sys/fd.js';

export const SECTOR_SIZE = 512;
const BLKGETSIZE64 = 0x80081272;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const EAGAIN = 11;
const EACCES = 13;

const fcntlPtr = libc.func('fcntl', 'int', ['int', 'int', 'void *']);

export class ImageError extends KumoError {}

export interface ImageOptions {
  readonly: boolean;
  direct: boolean;
}

/**
 * An opened raw image (regular file or block device) holding an OFD lock: a write lock for
 * read-write images, a read lock for readonly ones, so no two processes write one image
 * (and QEMU/Cloud Hypervisor's whole-file OFD locks conflict with ours).
 */
export class DiskImage {
  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly size: number,
    readonly readonly: boolean,
    readonly direct: boolean,
    readonly isBlockDevice: boolean,
  ) {}

  get sectors(): number {
    return this.size / SECTOR_SIZE;
  }

  static open(path: string, opts: ImageOptions): DiskImage {
    const flags = (opts.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (opts.direct ? O_DIRECT : 0);
    let fd: number;
    try {
      fd = openFile(path, flags);
    } catch (e) {
      const code = e instanceof SysError ? e.code : String(e);
      throw new ImageError(`cannot open image ${path}: ${code}`, { path, ...opts, cause: code });
    }
    try {
      const st = fstatSync(fd);
      let size: number;
      if (st.isBlockDevice()) {
        const b = Buffer.alloc(8);
        ioctl(fd, BLKGETSIZE64, b);
        size = Number(b.readBigUInt64LE(0));
      } else if (st.isFile()) {
        size = st.size;
      } else {
        throw new ImageError(`image ${path} is neither a regular file nor a block device`, { path });
      }
      if (size % SECTOR_SIZE !== 0) {
        throw new ImageError(`image ${path} size ${size} is not a multiple of ${SECTOR_SIZE} bytes`, { path, size });
      }
      lock(fd, path, opts.readonly ? F_RDLCK : F_WRLCK);
      return new DiskImage(path, fd, size, opts.readonly, opts.direct, st.isBlockDevice());
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
  // struct flock: l_type s16 @0, l_whence s16 @2, l_start @8, l_len @16 (0 = whole file), l_pid @24 (0 for OFD)
  const fl = Buffer.alloc(32);
  fl.writeInt16LE(type, 0);
  if ((fcntlPtr(fd, F_OFD_SETLK, fl) as number) < 0) {
    const errno = koffi.errno();
    const e = new SysError('fcntl(F_OFD_SETLK)', errno, { path });
    if (errno === EAGAIN || errno === EACCES) {
      throw new ImageError(`image ${path} is locked by another process`, { path, code: e.code });
    }
    throw e;
  }
}
