import {
  Op, Fattr, FUSE_GETATTR_FH, FUSE_SETXATTR_ACL_KILL_SGID, FuseProtocolError, AttrOut, GetattrIn, SetattrIn, AccessIn,
  Kstatfs, SetxattrIn, SetxattrExtIn, GetxattrIn, GetxattrOut, type InHeader,
} from '../../protocol/fuse/index.js';
import type { FuseIo } from './fuse-io.js';
import type { PassthroughFs } from './passthrough.js';
import type { Replies } from './replies.js';
import { callerOf, cstring } from './request-args.js';
import type { FuseSession } from './session.js';

/** The generic path's requests on attributes: GETATTR, SETATTR, ACCESS, STATFS and the xattr requests. */
export class AttrRequests {
  constructor(
    private readonly fs: PassthroughFs,
    private readonly session: FuseSession,
    private readonly replies: Replies,
  ) {}

  getattr(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const g = GetattrIn.decode(a);
    const r = fs.getattr(fs.inode(h.nodeid), g.getattrFlags & FUSE_GETATTR_FH ? g.fh : undefined);
    return this.replies.replyStruct(io, h.unique, AttrOut, { attrValid: r.valid, attrValidNsec: r.validNsec, attr: r.attr });
  }

  setattr(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const sa = SetattrIn.decode(a);
    const r = fs.setattr(fs.inode(h.nodeid), sa, this.session.kill((sa.valid & Fattr.KILL_SUIDGID) !== 0));
    return this.replies.replyStruct(io, h.unique, AttrOut, { attrValid: r.valid, attrValidNsec: r.validNsec, attr: r.attr });
  }

  access(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    fs.access(callerOf(h), fs.inode(h.nodeid), AccessIn.decode(a).mask);
    return this.replies.reply(io, h.unique, 0);
  }

  statfs(io: FuseIo, h: InHeader): number {
    const fs = this.fs;
    return this.replies.replyStruct(io, h.unique, Kstatfs, fs.statfs(fs.inode(h.nodeid)));
  }

  setxattr(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const s = this.session.setxattrExt ? SetxattrExtIn.decode(a) : { ...SetxattrIn.decode(a), setxattrFlags: 0 };
    const name = cstring(a, this.session.setxattrExt ? SetxattrExtIn.size : SetxattrIn.size);
    if (name.next + s.size > a.length) throw new FuseProtocolError('setxattr value overruns request', { size: s.size });
    const killSgid = (s.setxattrFlags & FUSE_SETXATTR_ACL_KILL_SGID) !== 0;
    fs.setxattr(fs.inode(h.nodeid), name.name, a.subarray(name.next, name.next + s.size), s.flags, killSgid);
    return this.replies.reply(io, h.unique, 0);
  }

  /** GETXATTR, or LISTXATTR: the value (names), or its size when the guest asked for size 0. */
  getxattr(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    const g = GetxattrIn.decode(a);
    const i = fs.inode(h.nodeid);
    const r = h.opcode === Op.GETXATTR ? fs.getxattr(i, cstring(a, GetxattrIn.size).name, g.size) : fs.listxattr(i, g.size);
    if (typeof r === 'number') return this.replies.replyStruct(io, h.unique, GetxattrOut, { size: r });
    return this.replies.replyBytes(io, h.unique, r);
  }

  removexattr(io: FuseIo, h: InHeader, a: Buffer): number {
    const fs = this.fs;
    fs.removexattr(fs.inode(h.nodeid), cstring(a, 0).name);
    return this.replies.reply(io, h.unique, 0);
  }
}
