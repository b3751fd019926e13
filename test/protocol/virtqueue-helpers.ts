import type { GuestMemory } from '../../protocol/memory/index.js';
import type { QueueLayout } from '../../protocol/virtqueue/index.js';

/** Raw descriptor writer for crafting (possibly hostile) chains the way a guest would. */
export function writeDesc(mem: GuestMemory, table: number, i: number, addr: number, len: number, flags: number, next = 0): void {
  const at = table + i * 16;
  mem.writeU32(at, addr % 2 ** 32);
  mem.writeU32(at + 4, Math.floor(addr / 2 ** 32));
  mem.writeU32(at + 8, len);
  mem.writeU16(at + 12, flags);
  mem.writeU16(at + 14, next);
}

/** Puts head into the avail ring at the current avail.idx and bumps avail.idx by one. */
export function offer(mem: GuestMemory, l: QueueLayout, head: number): void {
  const idx = mem.readU16(l.availAddr + 2);
  mem.writeU16(l.availAddr + 4 + 2 * (idx % l.size), head);
  mem.writeU16(l.availAddr + 2, (idx + 1) & 0xffff);
}

export function usedIdx(mem: GuestMemory, l: QueueLayout): number {
  return mem.readU16(l.usedAddr + 2);
}

export function usedElem(mem: GuestMemory, l: QueueLayout, i: number): { id: number; len: number } {
  const at = l.usedAddr + 4 + 8 * (i % l.size);
  return { id: mem.readU32(at), len: mem.readU32(at + 4) };
}
