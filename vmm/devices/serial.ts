import type { ArenaBlock, ArenaLock, SharedArena } from './shared-state.js';
import type { BusDevice, Interrupt, OutputSink } from './types.js';

// Register offsets (DLAB=0 unless noted).
const DATA = 0; // THR/RBR, DLL with DLAB
const IER = 1; // DLH with DLAB
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const IER_RDA = 0x01;
const IER_THRE = 0x02;
const IIR_NONE = 0x01;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_FIFO = 0xc0;
const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MSR_DEFAULT = 0xb0; // DCD | DSR | CTS: a connected, ready line

// Arena layout (bytes): register file, then the input ring.
const S_IER = 0;
const S_LCR = 1;
const S_MCR = 2;
const S_SCR = 3;
const S_DLL = 4;
const S_DLH = 5;
const S_FCR = 6;
const S_THR_PENDING = 7;
const S_HEAD = 8; // i32 index 2: consumer count
const S_TAIL = 12; // i32 index 3: producer count
const RING = 16;

export const SERIAL_PORT_LEN = 8;

export interface SerialOptions {
  name?: string;
  irq: Interrupt | null;
  /** Guest output; null drops it (e.g. a thread that never sees guest writes). */
  output: OutputSink | null;
  inputCapacity?: number;
}

/**
 * 16550A UART as Linux's 8250 driver probes and uses it: transmit is instantaneous (THR always empty),
 * receive comes from a ring in the arena filled by enqueueInput() (main thread, stdin).
 */
export class Serial implements BusDevice {
  readonly lock: ArenaLock;
  private readonly s: ArenaBlock;
  private readonly cap: number;
  private readonly one = new Uint8Array(1);

  constructor(
    arena: SharedArena,
    private readonly opts: SerialOptions,
  ) {
    const name = opts.name ?? 'serial';
    this.cap = opts.inputCapacity ?? 1024;
    this.lock = arena.lock(name);
    this.s = arena.alloc(`dev:${name}`, RING + this.cap);
    if (this.cap & (this.cap - 1)) throw new RangeError(`serial input capacity must be a power of two: ${this.cap}`);
    // Power-on register values are all zero; LSR/MSR/IIR are derived at read time, so no thread
    // has to initialise the arena.
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.readReg(offset);
  }

  write(offset: number, data: Uint8Array): void {
    this.writeReg(offset, data[0]);
  }

  /** Queues guest input (call without holding the lock). Returns how many bytes fitted. */
  enqueueInput(bytes: Uint8Array): number {
    let n = 0;
    let fire = false;
    this.lock.with(() => {
      n = this.push(bytes);
      fire = n > 0 && (this.u8(S_IER) & IER_RDA) !== 0;
    });
    if (fire) this.opts.irq?.trigger();
    return n;
  }

  /** Bytes waiting for the guest to read. */
  pendingInput(): number {
    return this.lock.with(() => this.count());
  }

  private readReg(offset: number): number {
    const dlab = (this.u8(S_LCR) & LCR_DLAB) !== 0;
    switch (offset) {
      case DATA:
        return dlab ? this.u8(S_DLL) : this.pop();
      case IER:
        return dlab ? this.u8(S_DLH) : this.u8(S_IER);
      case IIR_FCR: {
        const id = this.iir();
        // Reading IIR while it reports THR-empty acknowledges that interrupt (16550 datasheet).
        if (id === IIR_THRE) this.set(S_THR_PENDING, 0);
        return id | (this.u8(S_FCR) & 1 ? IIR_FIFO : 0);
      }
      case LCR:
        return this.u8(S_LCR);
      case MCR:
        return this.u8(S_MCR);
      case LSR:
        return (this.count() > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
      case MSR:
        return this.msr();
      case SCR:
        return this.u8(S_SCR);
      default:
        return 0xff;
    }
  }

  private writeReg(offset: number, v: number): void {
    const dlab = (this.u8(S_LCR) & LCR_DLAB) !== 0;
    switch (offset) {
      case DATA:
        if (dlab) {
          this.set(S_DLL, v);
          return;
        }
        this.transmit(v);
        return;
      case IER: {
        if (dlab) {
          this.set(S_DLH, v);
          return;
        }
        const old = this.u8(S_IER);
        const ier = v & 0x0f;
        this.set(S_IER, ier);
        let fire = false;
        // Enabling THRE while the THR is empty raises it at once (QEMU does the same; Linux's probe expects it).
        if (ier & IER_THRE && !(old & IER_THRE)) {
          this.set(S_THR_PENDING, 1);
          fire = true;
        }
        if (ier & IER_RDA && !(old & IER_RDA) && this.count() > 0) fire = true;
        if (fire) this.opts.irq?.trigger();
        return;
      }
      case IIR_FCR:
        // FIFO enable is remembered for IIR; clear-FIFO bits drop pending input.
        if (v & 0x02) this.clearInput();
        this.set(S_FCR, v & 0xc9);
        return;
      case LCR:
        this.set(S_LCR, v);
        return;
      case MCR:
        this.set(S_MCR, v & 0x1f);
        return;
      case SCR:
        this.set(S_SCR, v);
        return;
      default:
        return; // LSR/MSR are read-only
    }
  }

  private transmit(v: number): void {
    if (this.u8(S_MCR) & MCR_LOOP) {
      this.one[0] = v;
      this.push(this.one);
      if (this.u8(S_IER) & IER_RDA) this.opts.irq?.trigger();
    } else if (this.opts.output) {
      this.opts.output(Uint8Array.of(v));
    }
    if (this.u8(S_IER) & IER_THRE) {
      this.set(S_THR_PENDING, 1);
      this.opts.irq?.trigger();
    }
  }

  private iir(): number {
    const ier = this.u8(S_IER);
    if (ier & IER_RDA && this.count() > 0) return IIR_RDA;
    if (ier & IER_THRE && this.u8(S_THR_PENDING)) return IIR_THRE;
    return IIR_NONE;
  }

  private msr(): number {
    const mcr = this.u8(S_MCR);
    if (!(mcr & MCR_LOOP)) return MSR_DEFAULT;
    // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD (Linux's autoconfig checks this).
    return ((mcr & 0x01) << 5) | ((mcr & 0x02) << 3) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4);
  }

  private u8(i: number): number {
    return this.s.u8[i];
  }

  private set(i: number, v: number): void {
    this.s.u8[i] = v & 0xff;
  }

  private count(): number {
    return (this.s.i32[S_TAIL >> 2] - this.s.i32[S_HEAD >> 2]) | 0;
  }

  private push(bytes: Uint8Array): number {
    const free = this.cap - this.count();
    const n = Math.min(free, bytes.length);
    let tail = this.s.i32[S_TAIL >> 2];
    for (let i = 0; i < n; i++) {
      this.s.u8[RING + ((tail >>> 0) % this.cap)] = bytes[i];
      tail = (tail + 1) | 0;
    }
    this.s.i32[S_TAIL >> 2] = tail;
    return n;
  }

  private pop(): number {
    if (this.count() === 0) return 0;
    const head = this.s.i32[S_HEAD >> 2];
    const v = this.s.u8[RING + ((head >>> 0) % this.cap)];
    this.s.i32[S_HEAD >> 2] = (head + 1) | 0;
    return v;
  }

  private clearInput(): void {
    this.s.i32[S_HEAD >> 2] = this.s.i32[S_TAIL >> 2];
  }
}
