import type { GuestMemory, GuestRegion } from '../../protocol/memory/index.js';

/**
 * Guest address → host address as a plain number (for iovecs), with the region bases converted from
 * bigint once. Re-reads the region list whenever GuestMemory changed it.
 */
export class HostAddrs {
  private mem: GuestMemory | null = null;
  private refs: GuestRegion[] = [];
  private bases: number[] = [];

  /** Host address of [gpa, gpa+len), or -1 if that range is not inside one mapped region. */
  resolve(mem: GuestMemory, gpa: number, len: number): number {
    const regs = mem.regions;
    if (mem !== this.mem || regs.length !== this.refs.length) this.reload(mem);
    for (let i = 0; i < this.refs.length; i++) {
      const r = this.refs[i];
      const off = gpa - r.guestAddr;
      if (off >= 0 && len >= 0 && off + len <= r.size) {
        if (regs[i] !== r) {
          this.reload(mem);
          return this.resolve(mem, gpa, len);
        }
        return this.bases[i] + off;
      }
    }
    // A miss after the table changed under the same length (REM+ADD) deserves one fresh look.
    if (this.refs.some((r, i) => regs[i] !== r)) {
      this.reload(mem);
      return this.resolve(mem, gpa, len);
    }
    return -1;
  }

  private reload(mem: GuestMemory): void {
    this.mem = mem;
    this.refs = [...mem.regions];
    this.bases = this.refs.map((r) => (r.ptr === 0n ? -Infinity : Number(r.ptr)));
  }
}
