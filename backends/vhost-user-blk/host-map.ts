import type { GuestMemory, GuestRegion } from '../../protocol/memory/index.js';

/**
 * Guest address → host address as plain numbers (no BigInt on the data path), rebuilt when the
 * memory table changes. Host addresses of user mappings are < 2^47, so they are exact as numbers.
 */
export class HostMap {
  private mem: GuestMemory | null = null;
  private regs: GuestRegion[] = [];
  private start = new Float64Array(0);
  private end = new Float64Array(0);
  private host = new Float64Array(0);
  private last = 0;

  /** Re-reads the region table if it changed (cheap identity check; call once per batch). */
  sync(mem: GuestMemory): void {
    const rs = mem.regions;
    if (mem === this.mem && rs.length === this.regs.length && rs.every((r, i) => r === this.regs[i])) return;
    this.mem = mem;
    this.regs = rs.slice();
    const n = rs.length;
    this.start = new Float64Array(n);
    this.end = new Float64Array(n);
    this.host = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const r = rs[i];
      this.start[i] = r.guestAddr;
      this.end[i] = r.guestAddr + r.size;
      this.host[i] = r.ptr === 0n ? -1 : Number(r.ptr);
    }
    this.last = 0;
  }

  /** Host address of [gpa, gpa+len) if it lies inside one mapped region, else -1. */
  translate(gpa: number, len: number): number {
    const h = this.lookup(gpa, len);
    if (h >= 0 || this.mem === null || !this.mem.contains(gpa, len)) return h;
    // A region added since the last sync (the memory may have just mapped one it was told of: GuestMemory.missHook).
    this.sync(this.mem);
    return this.lookup(gpa, len);
  }

  private lookup(gpa: number, len: number): number {
    const n = this.start.length;
    let i = this.last;
    if (i < n && gpa >= this.start[i] && gpa + len <= this.end[i] && this.host[i] >= 0) return this.host[i] + (gpa - this.start[i]);
    for (i = 0; i < n; i++) {
      if (gpa >= this.start[i] && gpa + len <= this.end[i]) {
        if (this.host[i] < 0) return -1;
        this.last = i;
        return this.host[i] + (gpa - this.start[i]);
      }
    }
    return -1;
  }
}
