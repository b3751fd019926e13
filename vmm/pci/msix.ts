import type { ArenaBlock, ArenaLock, SharedArena } from '../devices/shared-state.js';
import type { Interrupt, InterruptRoutes, MsiMessage } from '../devices/types.js';
import { PciError, type PciConfig } from './config.js';

export const MSIX_CAP_ID = 0x11;
const CTRL_ENABLE = 0x8000;
const CTRL_FMASK = 0x4000;
const ENTRY = 16;
const ST_NONE = 0;
const ST_ACTIVE = 1;
const ST_MASKED = 2;

/**
 * MSI-X table + PBA of one function. Vector v is wired to GSI gsiBase+v: programming an entry sets
 * that GSI's MSI route; masking (entry bit, function mask, or MSI-X disabled) detaches its irqfd.
 * Triggers from the VMM's own data plane honour the mask by latching the PBA bit instead.
 */
export class MsixState {
  private readonly table: ArenaBlock;
  private readonly pba: ArenaBlock;
  /** Per vector: effective-masked byte (read lock-free by trigger), applied state, applied message. */
  private readonly applied: ArenaBlock;
  private capOffset = -1;
  private config: PciConfig | null = null;

  constructor(
    arena: SharedArena,
    readonly name: string,
    readonly vectors: number,
    readonly gsiBase: number,
    private readonly routes: InterruptRoutes,
    private readonly irqs: Interrupt[],
    readonly lock: ArenaLock,
  ) {
    if (vectors < 1 || vectors > 2048 || irqs.length !== vectors) {
      throw new PciError('bad MSI-X vector count', { name, vectors, irqs: irqs.length });
    }
    this.table = arena.allocInit(`msix:${name}:table`, vectors * ENTRY, (b) => {
      for (let v = 0; v < vectors; v++) b.view.setUint32(v * ENTRY + 12, 1, true); // masked at reset
    });
    this.pba = arena.alloc(`msix:${name}:pba`, Math.ceil(vectors / 64) * 8);
    this.applied = arena.allocInit(`msix:${name}:applied`, vectors * 16, (b) => {
      for (let v = 0; v < vectors; v++) b.u8[v * 16] = 1;
    });
  }

  get tableBytes(): number {
    return this.vectors * ENTRY;
  }

  get pbaBytes(): number {
    return this.pba.bytes;
  }

  /** Adds the capability (table and PBA in `bir` at the given offsets) to a function's config space. */
  attach(config: PciConfig, bir: number, tableOffset: number, pbaOffset: number): void {
    const body = new Uint8Array(10);
    const dv = new DataView(body.buffer);
    dv.setUint16(0, this.vectors - 1, true);
    dv.setUint32(2, (tableOffset | bir) >>> 0, true);
    dv.setUint32(6, (pbaOffset | bir) >>> 0, true);
    this.config = config;
    this.capOffset = config.addCapability(MSIX_CAP_ID, body, [{ offset: 2, len: 2, mask: CTRL_ENABLE | CTRL_FMASK }], () =>
      this.updateAll(),
    );
  }

  private control(): number {
    return this.config ? this.config.regs.getUint16(this.capOffset + 2, true) : 0;
  }

  tableRead(offset: number, data: Uint8Array): void {
    copyOut(this.table.u8, offset, data);
  }

  tableWrite(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.length > this.tableBytes) return;
    this.table.u8.set(data, offset);
    const first = Math.floor(offset / ENTRY);
    const last = Math.floor((offset + data.length - 1) / ENTRY);
    for (let v = first; v <= last; v++) this.update(v);
  }

  pbaRead(offset: number, data: Uint8Array): void {
    copyOut(this.pba.u8, offset, data);
  }

  entry(v: number): MsiMessage & { masked: boolean } {
    const t = this.table.view;
    return {
      addressLo: t.getUint32(v * ENTRY, true),
      addressHi: t.getUint32(v * ENTRY + 4, true),
      data: t.getUint32(v * ENTRY + 8, true),
      masked: (t.getUint32(v * ENTRY + 12, true) & 1) === 1,
    };
  }

  gsi(v: number): number {
    return this.gsiBase + v;
  }

  pending(v: number): boolean {
    return (this.pba.u8[v >> 3] & (1 << (v & 7))) !== 0;
  }

  /** Interrupt for vector v that respects masking (for data planes running in this process). */
  vector(v: number): Interrupt {
    if (v < 0 || v >= this.vectors) throw new PciError('MSI-X vector out of range', { name: this.name, v });
    return {
      trigger: () => {
        if (Atomics.load(this.applied.u8, v * 16) === 0) {
          this.irqs[v].trigger();
          return;
        }
        this.lock.with(() => {
          if (this.applied.u8[v * 16] === 0) this.irqs[v].trigger();
          else this.pba.u8[v >> 3] |= 1 << (v & 7);
        });
      },
    };
  }

  private updateAll(): void {
    for (let v = 0; v < this.vectors; v++) this.update(v);
  }

  /** Caller holds the function's lock (bus access or config write). */
  private update(v: number): void {
    const ctrl = this.control();
    const e = this.entry(v);
    const masked = !(ctrl & CTRL_ENABLE) || (ctrl & CTRL_FMASK) !== 0 || e.masked;
    const a = this.applied.view;
    const base = v * 16;
    const state = a.getUint8(base + 1);
    const gsi = this.gsi(v);
    if (masked) {
      if (state === ST_ACTIVE) this.routes.setMasked(gsi, true);
      if (state === ST_ACTIVE) a.setUint8(base + 1, ST_MASKED);
      Atomics.store(this.applied.u8, base, 1);
      return;
    }
    const same =
      state !== ST_NONE &&
      a.getUint32(base + 4, true) === e.addressLo &&
      a.getUint32(base + 8, true) === e.addressHi &&
      a.getUint32(base + 12, true) === e.data;
    if (!same) {
      this.routes.setMsiRoute(gsi, { addressLo: e.addressLo, addressHi: e.addressHi, data: e.data });
      a.setUint32(base + 4, e.addressLo, true);
      a.setUint32(base + 8, e.addressHi, true);
      a.setUint32(base + 12, e.data, true);
    }
    if (state !== ST_ACTIVE) this.routes.setMasked(gsi, false);
    a.setUint8(base + 1, ST_ACTIVE);
    Atomics.store(this.applied.u8, base, 0);
    if (this.pending(v)) {
      this.pba.u8[v >> 3] &= ~(1 << (v & 7));
      this.irqs[v].trigger();
    }
  }
}

function copyOut(src: Uint8Array, offset: number, data: Uint8Array): void {
  for (let i = 0; i < data.length; i++) {
    const o = offset + i;
    data[i] = o >= 0 && o < src.length ? src[o] : 0;
  }
}
