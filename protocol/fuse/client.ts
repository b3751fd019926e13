import { KumoError } from '../errors.js';
import { errnoName } from '../sys/libc.js';
import { decodeDirents, decodeDirentsplus, type DirEntry } from './dirent.js';
import { encodeSecctx, type SecurityContext } from './secctx.js';
import { encodeSuppGroups } from './supp-groups.js';
import { Op, FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, FUSE_ROOT_ID, Init } from './opcodes.js';
import {
  InHeader, OutHeader, EntryOut, AttrOut, GetattrIn, MknodIn, MkdirIn, Rename2In, RenameIn, LinkIn, SetattrIn,
  OpenIn, CreateIn, OpenOut, ReleaseIn, FlushIn, ReadIn, WriteIn, WriteOut, Kstatfs, FsyncIn, SetxattrIn, SetxattrExtIn, GetxattrIn,
  GetxattrOut, LkIn, LkOut, AccessIn, InitIn, InitOut, FallocateIn, LseekIn, LseekOut, ReaddirIn, CopyFileRangeIn, ForgetIn,
  ForgetOne, BatchForgetIn, InterruptIn, SyncfsIn, IN_HEADER_SIZE, OUT_HEADER_SIZE,
  type EntryOut as EntryOutT, type Attr, type SetattrIn as SetattrInT, type FileLock, type InitOut as InitOutT,
} from './structs.js';

/** Carries one request (header + args, already encoded) and returns the raw reply (empty for no-reply ops). */
export interface FuseTransport {
  /** `replySize` is the writable space the request offers; 0 for FORGET-like requests. `hiprio` selects queue 0. */
  call(request: Uint8Array, replySize: number, hiprio?: boolean): Promise<Uint8Array>;
}

/** A reply with a non-zero error. */
export class FuseReplyError extends KumoError {
  constructor(
    readonly op: string,
    readonly errno: number,
  ) {
    super(`${op}: ${errnoName(errno)}`, { op, errno });
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

const enc = new TextEncoder();
export const nameBytes = (s: string | Uint8Array): Uint8Array => (typeof s === 'string' ? enc.encode(s) : s);
const z = (s: string | Uint8Array): Uint8Array => {
  const b = nameBytes(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
};

export interface Caller {
  uid: number;
  gid: number;
  pid: number;
}

/** A FUSE client: encodes requests, decodes replies. Used by kumo-vu and by the tests. */
export class FuseClient {
  private unique = 1n;
  caller: Caller = { uid: 0, gid: 0, pid: 1 };
  init_: InitOutT | null = null;

  constructor(private readonly t: FuseTransport) {}

  /** Encodes a request; exposed for hostile-input tests. */
  encode(opcode: number, nodeid: number, parts: Uint8Array[], unique = this.unique++, totalExtlen = 0): Uint8Array {
    let len = IN_HEADER_SIZE;
    for (const p of parts) len += p.length;
    const req = new Uint8Array(len);
    InHeader.encode({ len, opcode, unique, nodeid, uid: this.caller.uid, gid: this.caller.gid, pid: this.caller.pid, totalExtlen }, req, 0);
    let o = IN_HEADER_SIZE;
    for (const p of parts) {
      req.set(p, o);
      o += p.length;
    }
    return req;
  }

  /** Sends a request; returns the reply body, throws FuseReplyError on error. */
  async call(opcode: number, nodeid: number, parts: Uint8Array[], replySize: number, name = String(opcode), totalExtlen = 0): Promise<Uint8Array> {
    const unique = this.unique++;
    const reply = await this.t.call(this.encode(opcode, nodeid, parts, unique, totalExtlen), OUT_HEADER_SIZE + replySize);
    if (reply.length < OUT_HEADER_SIZE) throw new KumoError('short FUSE reply', { op: name, len: reply.length });
    const h = OutHeader.decode(reply);
    if (h.unique !== unique) throw new KumoError('FUSE reply for another request', { op: name, want: unique, got: h.unique });
    if (h.error !== 0) throw new FuseReplyError(name, -h.error);
    return reply.subarray(OUT_HEADER_SIZE, Math.min(h.len, reply.length));
  }

  private async noReply(opcode: number, nodeid: number, parts: Uint8Array[]): Promise<void> {
    await this.t.call(this.encode(opcode, nodeid, parts), 0, true);
  }

  /** `flags`: by default much of what a Linux virtio-fs guest offers (FUSE_SUBMOUNTS included). */
  async init(flags = Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.DO_READDIRPLUS | Init.READDIRPLUS_AUTO |
    Init.PARALLEL_DIROPS | Init.ATOMIC_O_TRUNC | Init.POSIX_LOCKS | Init.INIT_EXT | Init.SUBMOUNTS): Promise<InitOutT> {
    const r = await this.call(Op.INIT, 0, [InitIn.pack({ major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, maxReadahead: 131072,
      flags: Number(flags & 0xffffffffn), flags2: Number(flags >> 32n) })], InitOut.size, 'INIT');
    const padded = new Uint8Array(InitOut.size);
    padded.set(r.subarray(0, InitOut.size));
    this.init_ = InitOut.decode(padded);
    return this.init_;
  }
  async destroy(): Promise<void> {
    await this.call(Op.DESTROY, 0, [], 0, 'DESTROY');
  }

  async lookup(parent: number, name: string | Uint8Array): Promise<EntryOutT> {
    return EntryOut.decode(await this.call(Op.LOOKUP, parent, [z(name)], EntryOut.size, 'LOOKUP'));
  }
  async forget(nodeid: number, nlookup: number): Promise<void> {
    await this.noReply(Op.FORGET, nodeid, [ForgetIn.pack({ nlookup })]);
  }
  /** BATCH_FORGET, in requests of at most 1024 entries (16 KiB), as the kernel splits its own. */
  async batchForget(items: { nodeid: number; nlookup: number }[]): Promise<void> {
    for (let k = 0; k < items.length; k += 1024) {
      const part = items.slice(k, k + 1024);
      await this.noReply(Op.BATCH_FORGET, 0, [BatchForgetIn.pack({ count: part.length }), ...part.map((i) => ForgetOne.pack(i))]);
    }
  }
  /**
   * The label creations carry once the server took FUSE_SECURITY_CTX, as a kernel whose LSM labels new inodes
   * sends it (null: the bare header, as a kernel without such an LSM sends).
   */
  securityContext: SecurityContext | null = null;

  /**
   * The supplementary group creations carry once the server took FUSE_CREATE_SUPP_GROUP, as a kernel sends the
   * parent directory's group when the caller has it only as a supplementary group (null: none sent).
   */
  suppGroup: number | null = null;

  /**
   * What follows a creation's names: the security context, and the supplementary group as a request extension.
   * With a group both are extensions (total_extlen counts them), as Linux 6.2+ sends them.
   */
  private creationExt(): { parts: Uint8Array[]; extlen: number } {
    const parts = this.granted(Init.SECURITY_CTX) ? [encodeSecctx(this.securityContext)] : [];
    if (this.suppGroup === null || !this.granted(Init.CREATE_SUPP_GROUP)) return { parts, extlen: 0 };
    parts.push(encodeSuppGroups([this.suppGroup]));
    return { parts, extlen: parts.reduce((n, p) => n + p.length, 0) / 8 };
  }

  /** A creation request (CREATE, MKDIR, MKNOD, SYMLINK): `args` then the creation extensions. */
  private create_(opcode: number, parent: number, args: Uint8Array[], replySize: number, name: string): Promise<Uint8Array> {
    const ext = this.creationExt();
    return this.call(opcode, parent, [...args, ...ext.parts], replySize, name, ext.extlen);
  }

  /** Whether the server's INIT reply took `flag`. */
  granted(flag: bigint): boolean {
    return this.init_ !== null && ((BigInt(this.init_.flags) | (BigInt(this.init_.flags2) << 32n)) & flag) !== 0n;
  }

  /** The unique the next request will carry (to INTERRUPT a request that waits, such as SETLKW). */
  get nextUnique(): bigint {
    return this.unique;
  }
  async interrupt(unique: bigint): Promise<void> {
    await this.noReply(Op.INTERRUPT, 0, [InterruptIn.pack({ unique })]);
  }
  async getattr(nodeid: number, fh?: number): Promise<Attr> {
    const r = await this.call(Op.GETATTR, nodeid, [GetattrIn.pack({ getattrFlags: fh === undefined ? 0 : 1, fh: fh ?? 0 })], AttrOut.size, 'GETATTR');
    return AttrOut.decode(r).attr;
  }
  async setattr(nodeid: number, a: Partial<SetattrInT> & { valid: number }): Promise<Attr> {
    const full: SetattrInT = { fh: 0, size: 0, lockOwner: 0n, atime: 0, mtime: 0, ctime: 0, atimensec: 0, mtimensec: 0, ctimensec: 0, mode: 0, uid: 0, gid: 0, ...a };
    return AttrOut.decode(await this.call(Op.SETATTR, nodeid, [SetattrIn.pack(full)], AttrOut.size, 'SETATTR')).attr;
  }
  async readlink(nodeid: number): Promise<Uint8Array> {
    return (await this.call(Op.READLINK, nodeid, [], 4096, 'READLINK')).slice();
  }
  async symlink(parent: number, name: string | Uint8Array, target: string | Uint8Array): Promise<EntryOutT> {
    return EntryOut.decode(await this.create_(Op.SYMLINK, parent, [z(name), z(target)], EntryOut.size, 'SYMLINK'));
  }
  /** `umask` matters once the server took FUSE_DONT_MASK: it then applies it (a kernel sends its process's). */
  async mknod(parent: number, name: string | Uint8Array, mode: number, rdev = 0, umask = 0): Promise<EntryOutT> {
    return EntryOut.decode(await this.create_(Op.MKNOD, parent, [MknodIn.pack({ mode, rdev, umask }), z(name)], EntryOut.size, 'MKNOD'));
  }
  async mkdir(parent: number, name: string | Uint8Array, mode = 0o755, umask = 0): Promise<EntryOutT> {
    return EntryOut.decode(await this.create_(Op.MKDIR, parent, [MkdirIn.pack({ mode, umask }), z(name)], EntryOut.size, 'MKDIR'));
  }
  async unlink(parent: number, name: string | Uint8Array): Promise<void> {
    await this.call(Op.UNLINK, parent, [z(name)], 0, 'UNLINK');
  }
  async rmdir(parent: number, name: string | Uint8Array): Promise<void> {
    await this.call(Op.RMDIR, parent, [z(name)], 0, 'RMDIR');
  }
  async rename(parent: number, name: string, newParent: number, newName: string, flags?: number): Promise<void> {
    if (flags === undefined) await this.call(Op.RENAME, parent, [RenameIn.pack({ newdir: newParent }), z(name), z(newName)], 0, 'RENAME');
    else await this.call(Op.RENAME2, parent, [Rename2In.pack({ newdir: newParent, flags }), z(name), z(newName)], 0, 'RENAME2');
  }
  async link(nodeid: number, newParent: number, newName: string): Promise<EntryOutT> {
    return EntryOut.decode(await this.call(Op.LINK, newParent, [LinkIn.pack({ oldnodeid: nodeid }), z(newName)], EntryOut.size, 'LINK'));
  }
  /** `openFlags`: FUSE_OPEN_KILL_SUIDGID for an O_TRUNC by a caller without CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2). */
  async open(nodeid: number, flags: number, openFlags = 0): Promise<{ fh: number; openFlags: number }> {
    return OpenOut.decode(await this.call(Op.OPEN, nodeid, [OpenIn.pack({ flags, openFlags })], OpenOut.size, 'OPEN'));
  }
  async create(parent: number, name: string, flags: number, mode: number, umask = 0, openFlags = 0): Promise<{ entry: EntryOutT; fh: number; openFlags: number }> {
    const r = await this.create_(Op.CREATE, parent, [CreateIn.pack({ flags, mode, umask, openFlags }), z(name)], EntryOut.size + OpenOut.size, 'CREATE');
    const o = OpenOut.decode(r, EntryOut.size);
    return { entry: EntryOut.decode(r), fh: o.fh, openFlags: o.openFlags };
  }
  async read(nodeid: number, fh: number, offset: number, size: number): Promise<Uint8Array> {
    return (await this.call(Op.READ, nodeid, [ReadIn.pack({ fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 })], size, 'READ')).slice();
  }
  /** `writeFlags`: FUSE_WRITE_KILL_SUIDGID for a writer without CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2). */
  /** `fileFlags`: the open file's flags now (fuse_write_in.flags; O_APPEND there asks for an append). */
  async write(nodeid: number, fh: number, offset: number, data: Uint8Array, writeFlags = 0, fileFlags = 0): Promise<number> {
    const r = await this.call(Op.WRITE, nodeid, [WriteIn.pack({ fh, offset, size: data.length, writeFlags, lockOwner: 0n, flags: fileFlags }), data], WriteOut.size, 'WRITE');
    return WriteOut.decode(r).size;
  }
  async statfs(nodeid = FUSE_ROOT_ID): Promise<ReturnType<typeof Kstatfs.decode>> {
    return Kstatfs.decode(await this.call(Op.STATFS, nodeid, [], Kstatfs.size, 'STATFS'));
  }
  /** `releaseFlags`: FUSE_RELEASE_FLOCK_UNLOCK when the guest's last close drops a flock lock. */
  async release(nodeid: number, fh: number, dir = false, releaseFlags = 0): Promise<void> {
    await this.call(dir ? Op.RELEASEDIR : Op.RELEASE, nodeid, [ReleaseIn.pack({ fh, flags: 0, releaseFlags, lockOwner: 0n })], 0, dir ? 'RELEASEDIR' : 'RELEASE');
  }
  async flush(nodeid: number, fh: number, lockOwner = 0n): Promise<void> {
    await this.call(Op.FLUSH, nodeid, [FlushIn.pack({ fh, lockOwner })], 0, 'FLUSH');
  }
  async fsync(nodeid: number, fh: number, datasync = false, dir = false): Promise<void> {
    await this.call(dir ? Op.FSYNCDIR : Op.FSYNC, nodeid, [FsyncIn.pack({ fh, fsyncFlags: datasync ? 1 : 0 })], 0, dir ? 'FSYNCDIR' : 'FSYNC');
  }
  /** Sends the extended setxattr_in (with `setxattrFlags`) once the server took FUSE_SETXATTR_EXT. */
  async setxattr(nodeid: number, name: string, value: Uint8Array, flags = 0, setxattrFlags = 0): Promise<void> {
    const ext = this.granted(Init.SETXATTR_EXT);
    const head = ext ? SetxattrExtIn.pack({ size: value.length, flags, setxattrFlags }) : SetxattrIn.pack({ size: value.length, flags });
    await this.call(Op.SETXATTR, nodeid, [head, z(name), value], 0, 'SETXATTR');
  }
  /** size 0 → the value's length (number). */
  async getxattr(nodeid: number, name: string, size: number): Promise<number | Uint8Array> {
    const r = await this.call(Op.GETXATTR, nodeid, [GetxattrIn.pack({ size }), z(name)], size === 0 ? GetxattrOut.size : size, 'GETXATTR');
    return size === 0 ? GetxattrOut.decode(r).size : r.slice();
  }
  async listxattr(nodeid: number, size: number): Promise<number | Uint8Array> {
    const r = await this.call(Op.LISTXATTR, nodeid, [GetxattrIn.pack({ size })], size === 0 ? GetxattrOut.size : size, 'LISTXATTR');
    return size === 0 ? GetxattrOut.decode(r).size : r.slice();
  }
  async removexattr(nodeid: number, name: string): Promise<void> {
    await this.call(Op.REMOVEXATTR, nodeid, [z(name)], 0, 'REMOVEXATTR');
  }
  async opendir(nodeid: number): Promise<{ fh: number; openFlags: number }> {
    return OpenOut.decode(await this.call(Op.OPENDIR, nodeid, [OpenIn.pack({ flags: 0o200000, openFlags: 0 })], OpenOut.size, 'OPENDIR'));
  }
  async readdir(nodeid: number, fh: number, offset: bigint, size = 4096): Promise<DirEntry[]> {
    return decodeDirents(await this.call(Op.READDIR, nodeid, [ReaddirIn.pack({ fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 })], size, 'READDIR'));
  }
  async readdirplus(nodeid: number, fh: number, offset: bigint, size = 4096): Promise<{ entry: EntryOutT; dirent: DirEntry }[]> {
    return decodeDirentsplus(await this.call(Op.READDIRPLUS, nodeid, [ReaddirIn.pack({ fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 })], size, 'READDIRPLUS'));
  }
  async getlk(nodeid: number, fh: number, owner: bigint, lk: FileLock): Promise<FileLock> {
    return LkOut.decode(await this.call(Op.GETLK, nodeid, [LkIn.pack({ fh, owner, lk, lkFlags: 0 })], LkOut.size, 'GETLK')).lk;
  }
  /** `lkFlags`: FUSE_LK_FLOCK for flock(2) (whole file; the owner is the guest's open file). */
  async setlk(nodeid: number, fh: number, owner: bigint, lk: FileLock, wait = false, lkFlags = 0): Promise<void> {
    await this.call(wait ? Op.SETLKW : Op.SETLK, nodeid, [LkIn.pack({ fh, owner, lk, lkFlags })], 0, wait ? 'SETLKW' : 'SETLK');
  }
  async access(nodeid: number, mask: number): Promise<void> {
    await this.call(Op.ACCESS, nodeid, [AccessIn.pack({ mask })], 0, 'ACCESS');
  }
  async fallocate(nodeid: number, fh: number, offset: number, length: number, mode = 0): Promise<void> {
    await this.call(Op.FALLOCATE, nodeid, [FallocateIn.pack({ fh, offset, length, mode })], 0, 'FALLOCATE');
  }
  async lseek(nodeid: number, fh: number, offset: bigint, whence: number): Promise<bigint> {
    return BigInt.asIntN(64, LseekOut.decode(await this.call(Op.LSEEK, nodeid, [LseekIn.pack({ fh, offset, whence })], LseekOut.size, 'LSEEK')).offset);
  }
  async copyFileRange(nodeIn: number, fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number): Promise<number> {
    const r = await this.call(Op.COPY_FILE_RANGE, nodeIn, [CopyFileRangeIn.pack({ fhIn, offIn, nodeidOut: nodeOut, fhOut, offOut, len, flags: 0n })], WriteOut.size, 'COPY_FILE_RANGE');
    return WriteOut.decode(r).size;
  }
  /** SYNCFS of the file system whose root (the share's, or a submount's) is `nodeid`. */
  async syncfs(nodeid = FUSE_ROOT_ID): Promise<void> {
    await this.call(Op.SYNCFS, nodeid, [SyncfsIn.pack({})], 0, 'SYNCFS');
  }
}
