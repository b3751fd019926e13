import { VhostUserProtocolError } from './errors.js';
import type { MemRegion } from './payload.js';

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen;
}

/**
 * The daemon main thread's view of the front-end's memory table: metadata only (workers map the fds).
 * Used to validate tables and translate ring addresses from front-end user space to guest space.
 */
export class MemoryTable {
  private regs: MemRegion[] = [];

  get regions(): readonly MemRegion[] {
    return this.regs;
  }

  get isEmpty(): boolean {
    return this.regs.length === 0;
  }

  /** Throws VhostUserProtocolError for empty/overflowing regions or overlaps in guest or user space. */
  static validate(regions: readonly MemRegion[]): void {
    regions.forEach((r, i) => {
      MemoryTable.checkRegion(r);
      for (const o of regions.slice(0, i)) MemoryTable.checkDisjoint(r, o);
    });
  }

  replace(regions: readonly MemRegion[]): void {
    MemoryTable.validate(regions);
    this.regs = regions.map((r) => ({ ...r }));
  }

  add(r: MemRegion, maxSlots: number): void {
    MemoryTable.checkRegion(r);
    if (this.regs.length >= maxSlots) throw new VhostUserProtocolError('no free memory slot', { maxSlots });
    for (const o of this.regs) MemoryTable.checkDisjoint(r, o);
    this.regs.push({ ...r });
  }

  /** Removes the region matching guest address, user address and size (spec REM_MEM_REG); false if none matches. */
  remove(r: MemRegion): boolean {
    const i = this.regs.findIndex((o) => o.guestAddr === r.guestAddr && o.userAddr === r.userAddr && o.size === r.size);
    if (i < 0) return false;
    this.regs.splice(i, 1);
    return true;
  }

  clear(): void {
    this.regs = [];
  }

  /** User address range → guest address, or null unless the whole range lies in one region. */
  userToGuest(uaddr: number, len: number): number | null {
    for (const r of this.regs) {
      const off = uaddr - r.userAddr;
      if (off >= 0 && off + len <= r.size) return r.guestAddr + off;
    }
    return null;
  }

  private static checkRegion(r: MemRegion): void {
    const ok = r.size > 0 && Number.isSafeInteger(r.guestAddr + r.size) && Number.isSafeInteger(r.userAddr + r.size)
      && Number.isSafeInteger(r.mmapOffset + r.size);
    if (!ok) throw new VhostUserProtocolError('invalid memory region', { ...r });
  }

  private static checkDisjoint(r: MemRegion, o: MemRegion): void {
    if (overlaps(r.guestAddr, r.size, o.guestAddr, o.size)) {
      throw new VhostUserProtocolError('memory regions overlap in guest space', { guestAddr: r.guestAddr, other: o.guestAddr });
    }
    if (overlaps(r.userAddr, r.size, o.userAddr, o.size)) {
      throw new VhostUserProtocolError('memory regions overlap in user space', { userAddr: r.userAddr, other: o.userAddr });
    }
  }
}
