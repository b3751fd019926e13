import { VhostUserProtocolError } from './errors.js';
import type { MemRegion } from './payload.js';

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen;
}

type Placed = Pick<MemRegion, 'guestAddr' | 'size' | 'userAddr'>;

/** Whether two regions overlap in guest or in front-end address space. */
export function regionsOverlap(a: Placed, b: Placed): boolean {
  return overlaps(a.guestAddr, a.size, b.guestAddr, b.size) || overlaps(a.userAddr, a.size, b.userAddr, b.size);
}

/**
 * The daemon main thread's view of the front-end's memory table: metadata only (workers map the fds).
 * Used to validate tables and translate ring addresses from front-end user space to guest space.
 */
export class MemoryTable {
  private regs: MemRegion[] = [];
  /** How many times each region was added and not yet removed. */
  private users: number[] = [];

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
    this.users = regions.map(() => 1);
  }

  /**
   * Adds a region (ADD_MEM_REG); returns false when it only repeats one already in the table, which then
   * counts one more user and needs no new mapping. QEMU sends each region once per vhost device, and a
   * multiqueue virtio-net has one vhost device per queue pair on the same connection.
   */
  add(r: MemRegion, maxSlots: number): boolean {
    MemoryTable.checkRegion(r);
    const same = this.find(r);
    if (same >= 0 && this.regs[same].mmapOffset === r.mmapOffset) {
      this.users[same]++;
      return false;
    }
    if (this.regs.length >= maxSlots) throw new VhostUserProtocolError('no free memory slot', { maxSlots });
    for (const o of this.regs) MemoryTable.checkDisjoint(r, o);
    this.regs.push({ ...r });
    this.users.push(1);
    return true;
  }

  /**
   * Drops one user of the region matching guest address, user address and size (spec REM_MEM_REG).
   * Returns 'unmap' when that was the last one, 'kept' while others still use it, 'none' if no region matches.
   */
  remove(r: MemRegion): 'unmap' | 'kept' | 'none' {
    const i = this.find(r);
    if (i < 0) return 'none';
    if (--this.users[i] > 0) return 'kept';
    this.regs.splice(i, 1);
    this.users.splice(i, 1);
    return 'unmap';
  }

  private find(r: MemRegion): number {
    return this.regs.findIndex((o) => o.guestAddr === r.guestAddr && o.userAddr === r.userAddr && o.size === r.size);
  }

  clear(): void {
    this.regs = [];
    this.users = [];
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
