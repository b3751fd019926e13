import { FuseProtocolError } from './errors.js';
import { Op } from './opcodes.js';
import {
  CreateIn, EntryOut, FlushIn, ForgetIn, GetattrIn, IN_HEADER_SIZE, OUT_HEADER_SIZE, OpenOut, ReadIn, ReleaseIn, WriteIn,
} from './structs.js';

const TWO32 = 0x1_0000_0000;

// The offsets below follow linux/fuse.h; the Struct definitions are the reference and must agree.
if (IN_HEADER_SIZE !== 40 || OUT_HEADER_SIZE !== 16 || GetattrIn.size !== 16 || ForgetIn.size !== 8 || ReadIn.size !== 40 ||
  WriteIn.size !== 40 || CreateIn.size !== 16 || FlushIn.size !== 24 || ReleaseIn.size !== 24 || EntryOut.size !== 128 || OpenOut.size !== 16) {
  throw new FuseProtocolError('raw FUSE layout out of step with structs.ts');
}

/**
 * Writes the requests of a load generator (LOOKUP, GETATTR, FORGET, READ, WRITE, CREATE, FLUSH, RELEASE)
 * straight into one request buffer, typically a slot in guest memory, with no per-request objects or
 * bigints. Each method returns the request length. Caller ids are 0 (root), pid 1.
 */
export class RawFuseRequest {
  private readonly dv: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private u64(o: number, v: number): void {
    this.dv.setUint32(o, v >>> 0, true);
    this.dv.setUint32(o + 4, Math.floor(v / TWO32), true);
  }

  /** Throws before anything is written when a request of `len` bytes does not fit. */
  private fit(len: number): void {
    if (len > this.bytes.length) throw new FuseProtocolError('request does not fit its buffer', { len, have: this.bytes.length });
  }

  private header(len: number, opcode: number, unique: number, nodeid: number): number {
    const d = this.dv;
    d.setUint32(0, len, true);
    d.setUint32(4, opcode, true);
    this.u64(8, unique);
    this.u64(16, nodeid);
    d.setUint32(24, 0, true);
    d.setUint32(28, 0, true);
    d.setUint32(32, 1, true);
    d.setUint32(36, 0, true);
    return len;
  }

  /** `nameZ`: the name with its NUL. */
  lookup(unique: number, parent: number, nameZ: Uint8Array): number {
    this.fit(IN_HEADER_SIZE + nameZ.length);
    this.bytes.set(nameZ, IN_HEADER_SIZE);
    return this.header(IN_HEADER_SIZE + nameZ.length, Op.LOOKUP, unique, parent);
  }

  getattr(unique: number, nodeid: number): number {
    this.dv.setUint32(IN_HEADER_SIZE, 0, true);
    this.dv.setUint32(IN_HEADER_SIZE + 4, 0, true);
    this.u64(IN_HEADER_SIZE + 8, 0);
    return this.header(IN_HEADER_SIZE + 16, Op.GETATTR, unique, nodeid);
  }

  forget(unique: number, nodeid: number, nlookup: number): number {
    this.u64(IN_HEADER_SIZE, nlookup);
    return this.header(IN_HEADER_SIZE + 8, Op.FORGET, unique, nodeid);
  }

  read(unique: number, nodeid: number, fh: number, offset: number, size: number): number {
    this.rw(fh, offset, size);
    return this.header(IN_HEADER_SIZE + 40, Op.READ, unique, nodeid);
  }

  /** WRITE of `data`, copied in after the arguments. */
  write(unique: number, nodeid: number, fh: number, offset: number, data: Uint8Array): number {
    this.fit(IN_HEADER_SIZE + 40 + data.length);
    this.rw(fh, offset, data.length);
    this.bytes.set(data, IN_HEADER_SIZE + 40);
    return this.header(IN_HEADER_SIZE + 40 + data.length, Op.WRITE, unique, nodeid);
  }

  /** fuse_read_in and fuse_write_in share this layout (read_flags / write_flags at 20). */
  private rw(fh: number, offset: number, size: number): void {
    const A = IN_HEADER_SIZE;
    this.u64(A, fh);
    this.u64(A + 8, offset);
    this.dv.setUint32(A + 16, size, true);
    this.dv.setUint32(A + 20, 0, true);
    this.u64(A + 24, 0);
    this.dv.setUint32(A + 32, 0, true);
    this.dv.setUint32(A + 36, 0, true);
  }

  /** `nameZ`: the name with its NUL. */
  create(unique: number, parent: number, nameZ: Uint8Array, flags: number, mode: number): number {
    const A = IN_HEADER_SIZE;
    this.fit(A + 16 + nameZ.length);
    this.dv.setUint32(A, flags, true);
    this.dv.setUint32(A + 4, mode, true);
    this.dv.setUint32(A + 8, 0, true);
    this.dv.setUint32(A + 12, 0, true);
    this.bytes.set(nameZ, A + 16);
    return this.header(A + 16 + nameZ.length, Op.CREATE, unique, parent);
  }

  flush(unique: number, nodeid: number, fh: number): number {
    return this.fhOnly(Op.FLUSH, unique, nodeid, fh);
  }

  release(unique: number, nodeid: number, fh: number): number {
    return this.fhOnly(Op.RELEASE, unique, nodeid, fh);
  }

  /** fuse_flush_in and fuse_release_in: fh, then fields left 0 (no flags, no lock owner). */
  private fhOnly(opcode: number, unique: number, nodeid: number, fh: number): number {
    this.u64(IN_HEADER_SIZE, fh);
    this.u64(IN_HEADER_SIZE + 8, 0);
    this.u64(IN_HEADER_SIZE + 16, 0);
    return this.header(IN_HEADER_SIZE + 24, opcode, unique, nodeid);
  }
}

/** Reads a reply in place (a slot in guest memory): header fields and the ids a load generator needs. */
export class RawFuseReply {
  private readonly dv: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private u64(o: number): number {
    return this.dv.getUint32(o + 4, true) * TWO32 + this.dv.getUint32(o, true);
  }

  /**
   * Checks a reply of `usedLen` bytes to request `unique`: returns the reply body's length, or throws
   * on a short or foreign reply and on an error (with the errno in the message).
   */
  check(usedLen: number, unique: number, op: string): number {
    if (usedLen < OUT_HEADER_SIZE) throw new FuseProtocolError('short FUSE reply', { op, len: usedLen });
    const len = Math.min(this.dv.getUint32(0, true), usedLen);
    const error = this.dv.getInt32(4, true);
    if (this.u64(8) !== unique) throw new FuseProtocolError('FUSE reply for another request', { op, want: unique, got: this.u64(8) });
    if (error !== 0) throw new FuseProtocolError(`${op} failed: errno ${-error}`, { op, errno: -error });
    return len - OUT_HEADER_SIZE;
  }

  /** fuse_entry_out.nodeid (LOOKUP, CREATE). */
  entryNodeid(): number {
    return this.u64(OUT_HEADER_SIZE);
  }

  /** fuse_open_out.fh after the fuse_entry_out of a CREATE reply. */
  createFh(): number {
    return this.u64(OUT_HEADER_SIZE + EntryOut.size);
  }
}
