import { Struct } from './struct.js';

/** Wire structs of linux/fuse.h (protocol 7.38), little endian. */

export const InHeader = Struct.of('fuse_in_header', [
  ['len', 'u32'], ['opcode', 'u32'], ['unique', 'b64'], ['nodeid', 's64'],
  ['uid', 'u32'], ['gid', 'u32'], ['pid', 'u32'], ['totalExtlen', 'u16'], ['_pad', 'u16'],
] as const);
export type InHeader = ReturnType<typeof InHeader.decode>;

export const OutHeader = Struct.of('fuse_out_header', [['len', 'u32'], ['error', 'i32'], ['unique', 'b64']] as const);
export type OutHeader = ReturnType<typeof OutHeader.decode>;

export const Attr = Struct.of('fuse_attr', [
  ['ino', 'x64'], ['size', 'x64'], ['blocks', 'u64'], ['atime', 't64'], ['mtime', 't64'], ['ctime', 't64'],
  ['atimensec', 'u32'], ['mtimensec', 'u32'], ['ctimensec', 'u32'], ['mode', 'u32'], ['nlink', 'u32'],
  ['uid', 'u32'], ['gid', 'u32'], ['rdev', 'u32'], ['blksize', 'u32'], ['flags', 'u32'],
] as const);
export type Attr = ReturnType<typeof Attr.decode>;

export const EntryOut = Struct.of('fuse_entry_out', [
  ['nodeid', 'u64'], ['generation', 'u64'], ['entryValid', 'u64'], ['attrValid', 'u64'],
  ['entryValidNsec', 'u32'], ['attrValidNsec', 'u32'], ['attr', Attr],
] as const);
export type EntryOut = ReturnType<typeof EntryOut.decode>;

export const AttrOut = Struct.of('fuse_attr_out', [
  ['attrValid', 'u64'], ['attrValidNsec', 'u32'], ['_dummy', 'u32'], ['attr', Attr],
] as const);
export type AttrOut = ReturnType<typeof AttrOut.decode>;

export const ForgetIn = Struct.of('fuse_forget_in', [['nlookup', 's64']] as const);
export const ForgetOne = Struct.of('fuse_forget_one', [['nodeid', 's64'], ['nlookup', 's64']] as const);
export const BatchForgetIn = Struct.of('fuse_batch_forget_in', [['count', 'u32'], ['_dummy', 'u32']] as const);
export const GetattrIn = Struct.of('fuse_getattr_in', [['getattrFlags', 'u32'], ['_dummy', 'u32'], ['fh', 'u64']] as const);
export const MknodIn = Struct.of('fuse_mknod_in', [['mode', 'u32'], ['rdev', 'u32'], ['umask', 'u32'], ['_pad', 'u32']] as const);
export const MkdirIn = Struct.of('fuse_mkdir_in', [['mode', 'u32'], ['umask', 'u32']] as const);
export const RenameIn = Struct.of('fuse_rename_in', [['newdir', 'u64']] as const);
export const Rename2In = Struct.of('fuse_rename2_in', [['newdir', 'u64'], ['flags', 'u32'], ['_pad', 'u32']] as const);
export const LinkIn = Struct.of('fuse_link_in', [['oldnodeid', 'u64']] as const);

export const SetattrIn = Struct.of('fuse_setattr_in', [
  ['valid', 'u32'], ['_pad', 'u32'], ['fh', 'u64'], ['size', 'x64'], ['lockOwner', 'b64'],
  ['atime', 'x64'], ['mtime', 'x64'], ['ctime', 'x64'], ['atimensec', 'u32'], ['mtimensec', 'u32'],
  ['ctimensec', 'u32'], ['mode', 'u32'], ['_unused4', 'u32'], ['uid', 'u32'], ['gid', 'u32'], ['_unused5', 'u32'],
] as const);
export type SetattrIn = ReturnType<typeof SetattrIn.decode>;

export const OpenIn = Struct.of('fuse_open_in', [['flags', 'u32'], ['openFlags', 'u32']] as const);
export const CreateIn = Struct.of('fuse_create_in', [['flags', 'u32'], ['mode', 'u32'], ['umask', 'u32'], ['openFlags', 'u32']] as const);
export const OpenOut = Struct.of('fuse_open_out', [['fh', 'u64'], ['openFlags', 'u32'], ['_pad', 'u32']] as const);
export const ReleaseIn = Struct.of('fuse_release_in', [['fh', 'u64'], ['flags', 'u32'], ['releaseFlags', 'u32'], ['lockOwner', 'b64']] as const);
export const FlushIn = Struct.of('fuse_flush_in', [['fh', 'u64'], ['_unused', 'u32'], ['_pad', 'u32'], ['lockOwner', 'b64']] as const);
export const ReadIn = Struct.of('fuse_read_in', [
  ['fh', 'u64'], ['offset', 'x64'], ['size', 'u32'], ['readFlags', 'u32'], ['lockOwner', 'b64'], ['flags', 'u32'], ['_pad', 'u32'],
] as const);
/** READDIR/READDIRPLUS use fuse_read_in with an opaque 64-bit directory cookie as the offset. */
export const ReaddirIn = Struct.of('fuse_read_in', [
  ['fh', 'u64'], ['offset', 'b64'], ['size', 'u32'], ['readFlags', 'u32'], ['lockOwner', 'b64'], ['flags', 'u32'], ['_pad', 'u32'],
] as const);
export const WriteIn = Struct.of('fuse_write_in', [
  ['fh', 'u64'], ['offset', 'x64'], ['size', 'u32'], ['writeFlags', 'u32'], ['lockOwner', 'b64'], ['flags', 'u32'], ['_pad', 'u32'],
] as const);
export const WriteOut = Struct.of('fuse_write_out', [['size', 'u32'], ['_pad', 'u32']] as const);

export const Kstatfs = Struct.of('fuse_kstatfs', [
  ['blocks', 'x64'], ['bfree', 'x64'], ['bavail', 'x64'], ['files', 'x64'], ['ffree', 'x64'],
  ['bsize', 'u32'], ['namelen', 'u32'], ['frsize', 'u32'], ['_pad', 'u32'], ['_spare', { bytes: 24 }],
] as const);
export type Kstatfs = ReturnType<typeof Kstatfs.decode>;

export const FsyncIn = Struct.of('fuse_fsync_in', [['fh', 'u64'], ['fsyncFlags', 'u32'], ['_pad', 'u32']] as const);
export const SetxattrIn = Struct.of('fuse_setxattr_in', [['size', 'u32'], ['flags', 'u32']] as const);
/** fuse_setxattr_in once FUSE_SETXATTR_EXT is negotiated. */
export const SetxattrExtIn = Struct.of('fuse_setxattr_in', [['size', 'u32'], ['flags', 'u32'], ['setxattrFlags', 'u32'], ['_pad', 'u32']] as const);
/** setxattr_flags: the caller may not keep the file's set-group-ID bit (it is not in the group, lacks CAP_FSETID). */
export const FUSE_SETXATTR_ACL_KILL_SGID = 1;
export const GetxattrIn = Struct.of('fuse_getxattr_in', [['size', 'u32'], ['_pad', 'u32']] as const);
export const GetxattrOut = Struct.of('fuse_getxattr_out', [['size', 'u32'], ['_pad', 'u32']] as const);

export const FileLock = Struct.of('fuse_file_lock', [['start', 'b64'], ['end', 'b64'], ['type', 'u32'], ['pid', 'u32']] as const);
export type FileLock = ReturnType<typeof FileLock.decode>;
export const LkIn = Struct.of('fuse_lk_in', [['fh', 'u64'], ['owner', 'b64'], ['lk', FileLock], ['lkFlags', 'u32'], ['_pad', 'u32']] as const);
export type LkIn = ReturnType<typeof LkIn.decode>;
export const LkOut = Struct.of('fuse_lk_out', [['lk', FileLock]] as const);
export const AccessIn = Struct.of('fuse_access_in', [['mask', 'u32'], ['_pad', 'u32']] as const);

/** INIT request; kernels before 7.36 send only the first 16 bytes (decode zero-extends). */
export const InitIn = Struct.of('fuse_init_in', [
  ['major', 'u32'], ['minor', 'u32'], ['maxReadahead', 'u32'], ['flags', 'u32'], ['flags2', 'u32'], ['_unused', { bytes: 44 }],
] as const);
export const InitOut = Struct.of('fuse_init_out', [
  ['major', 'u32'], ['minor', 'u32'], ['maxReadahead', 'u32'], ['flags', 'u32'], ['maxBackground', 'u16'],
  ['congestionThreshold', 'u16'], ['maxWrite', 'u32'], ['timeGran', 'u32'], ['maxPages', 'u16'],
  ['mapAlignment', 'u16'], ['flags2', 'u32'], ['_unused', { bytes: 28 }],
] as const);
export type InitOut = ReturnType<typeof InitOut.decode>;

export const InterruptIn = Struct.of('fuse_interrupt_in', [['unique', 'b64']] as const);
export const FallocateIn = Struct.of('fuse_fallocate_in', [['fh', 'u64'], ['offset', 'x64'], ['length', 'x64'], ['mode', 'u32'], ['_pad', 'u32']] as const);
// Offsets as bigint: they span the whole i64 range (SEEK_END of a directory, SEEK_DATA far into a sparse file).
export const LseekIn = Struct.of('fuse_lseek_in', [['fh', 'u64'], ['offset', 'b64'], ['whence', 'u32'], ['_pad', 'u32']] as const);
export const LseekOut = Struct.of('fuse_lseek_out', [['offset', 'b64']] as const);
export const CopyFileRangeIn = Struct.of('fuse_copy_file_range_in', [
  ['fhIn', 'u64'], ['offIn', 'x64'], ['nodeidOut', 'u64'], ['fhOut', 'u64'], ['offOut', 'x64'], ['len', 'x64'], ['flags', 'b64'],
] as const);
export const SyncfsIn = Struct.of('fuse_syncfs_in', [['_pad', 'u64']] as const);

/** fuse_dirent: fixed part; the name follows, padded to 8 bytes. */
export const Dirent = Struct.of('fuse_dirent', [['ino', 'x64'], ['off', 'b64'], ['namelen', 'u32'], ['type', 'u32']] as const);
export type Dirent = ReturnType<typeof Dirent.decode>;

export const IN_HEADER_SIZE = InHeader.size; // 40
export const OUT_HEADER_SIZE = OutHeader.size; // 16
