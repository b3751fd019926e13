import {
  Op, EntryOut, ForgetIn, ForgetOne, BatchForgetIn, MknodIn, MkdirIn, RenameIn, Rename2In, LinkIn, type InHeader,
} from '../../protocol/fuse/index.js';
import { FsError } from './errors.js';
import type { FuseIo } from './fuse-io.js';
import type { PassthroughFs } from './passthrough.js';
import type { Replies } from './replies.js';
import { creatorOf, cstring, labelOf } from './request-args.js';
import type { FuseSession } from './session.js';

const SYMLINK_MAX = 4096;

/**
 * The generic path's requests on directory entries: LOOKUP and FORGET, the creations that open nothing (SYMLINK,
 * MKNOD, MKDIR, LINK), READLINK, UNLINK/RMDIR and RENAME.
 */
export class EntryRequests {
  constructor(
    private readonly fs: PassthroughFs,
    private readonly session: FuseSession,
    private readonly replies: Replies,
  ) {}

  lookup(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    return this.replies.replyStruct(io, h.unique, EntryOut, fs.lookup(fs.inode(h.nodeid), cstring(a, 0).name));
  }

  forget(h: InHeader, a: Buffer): number {
    this.fs.forget(h.nodeid, ForgetIn.decode(a).nlookup);
    return 0;
  }

  batchForget(a: Buffer): number {
    const { count } = BatchForgetIn.decode(a);
    // A count its body does not hold is a malformed request: dropped whole, as virtiofsd and QEMU's do.
    if (count > Math.floor((a.length - BatchForgetIn.size) / ForgetOne.size)) return this.replies.drop('BATCH_FORGET count beyond its entries', a.length);
    for (let k = 0; k < count; k++) {
      const f = ForgetOne.decode(a, BatchForgetIn.size + k * ForgetOne.size);
      this.fs.forget(f.nodeid, f.nlookup);
    }
    return 0;
  }

  readlink(io: FuseIo, h: InHeader): number {
    const fs = this.fs;
    return this.replies.replyBytes(io, h.unique, fs.readlink(fs.inode(h.nodeid)));
  }

  symlink(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const name = cstring(a, 0);
    const target = cstring(a, name.next);
    if (target.name.length >= SYMLINK_MAX) throw new FsError(36, 'symlink target too long');
    const s = this.session;
    return this.replies.replyStruct(io, h.unique, EntryOut, fs.symlink(creatorOf(s, h, a), fs.inode(h.nodeid), name.name, target.name, labelOf(s, h, a, target.next)));
  }

  mknod(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const s = this.session;
    const m = MknodIn.decode(a);
    const name = cstring(a, MknodIn.size);
    return this.replies.replyStruct(io, h.unique, EntryOut, fs.mknod(creatorOf(s, h, a), fs.inode(h.nodeid), name.name, m.mode, m.rdev, s.umask(m.umask), labelOf(s, h, a, name.next)));
  }

  mkdir(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const s = this.session;
    const m = MkdirIn.decode(a);
    const name = cstring(a, MkdirIn.size);
    return this.replies.replyStruct(io, h.unique, EntryOut, fs.mkdir(creatorOf(s, h, a), fs.inode(h.nodeid), name.name, m.mode, s.umask(m.umask), labelOf(s, h, a, name.next)));
  }

  /** UNLINK, or RMDIR. */
  unlink(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    fs.unlink(fs.inode(h.nodeid), cstring(a, 0).name, h.opcode === Op.RMDIR);
    return this.replies.reply(io, h.unique, 0);
  }

  /** RENAME, or RENAME2 (with flags). */
  rename(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const two = h.opcode === Op.RENAME2;
    const r = two ? Rename2In.decode(a) : { ...RenameIn.decode(a), flags: 0 };
    const oldName = cstring(a, two ? Rename2In.size : RenameIn.size);
    const newName = cstring(a, oldName.next);
    fs.rename(fs.inode(h.nodeid), oldName.name, fs.inode(r.newdir), newName.name, r.flags);
    return this.replies.reply(io, h.unique, 0);
  }

  link(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const l = LinkIn.decode(a);
    return this.replies.replyStruct(io, h.unique, EntryOut, fs.link(fs.inode(l.oldnodeid), fs.inode(h.nodeid), cstring(a, LinkIn.size).name));
  }
}
