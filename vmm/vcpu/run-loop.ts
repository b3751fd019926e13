import { koffi, rawIoctlInt } from '../../protocol/sys/libc.js';
import { viewOf } from '../../protocol/sys/mem.js';
import { logger } from '../../protocol/log.js';
import { KVM_RUN } from '../kvm/ioctls.js';
import {
  KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_OUT,
  KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT, KVM_SYSTEM_EVENT_CRASH,
  KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, RUN, exitName,
} from '../kvm/exits.js';
import { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { formatRegs } from '../kvm/structs.js';
import { CTL_STOP } from './control.js';
import type { VcpuIo } from './io.js';

const EINTR = 4;
const EAGAIN = 11;
const log = logger('vcpu');

/** Why a vCPU's run loop ended. */
export type VcpuStop =
  | { kind: 'stopped' }
  | { kind: 'poweroff' }
  | { kind: 'reset' }
  | { kind: 'hlt' }
  | { kind: 'triple-fault'; regs: string }
  | { kind: 'error'; message: string; regs: string };

/**
 * The KVM_RUN loop of one vCPU. Runs synchronously in its worker; PIO/MMIO exits go straight to the
 * device model. A kick (immediate_exit + signal) makes KVM_RUN return EINTR; the loop then returns
 * if the stop flag is set.
 */
export class VcpuRunLoop {
  private readonly run8: Uint8Array;
  private readonly dv: DataView;
  private readonly mmioViews: Uint8Array[] = [];
  private ioOff = -1;
  private ioViews: Uint8Array[] = [];
  private unhandledLogged = 0;
  exits = 0;

  constructor(
    readonly vcpu: KvmVcpuFd,
    runPtr: bigint,
    runSize: number,
    private readonly io: VcpuIo,
    private readonly control: Int32Array,
  ) {
    this.run8 = viewOf(runPtr, runSize);
    this.dv = new DataView(this.run8.buffer, this.run8.byteOffset, this.run8.byteLength);
    for (let n = 0; n <= 8; n++) this.mmioViews.push(this.run8.subarray(RUN.mmioData, RUN.mmioData + n));
  }

  run(): VcpuStop {
    const fd = this.vcpu.fd;
    const dv = this.dv;
    for (;;) {
      const r = rawIoctlInt(fd, KVM_RUN, 0);
      if (r < 0) {
        const errno = koffi.errno();
        if (errno === EINTR || errno === EAGAIN) {
          if (Atomics.load(this.control, CTL_STOP) !== 0) return { kind: 'stopped' };
          this.run8[RUN.immediateExit] = 0;
          continue;
        }
        return this.fail(`KVM_RUN failed: errno ${errno}`);
      }
      this.exits++;
      const reason = dv.getUint32(RUN.exitReason, true);
      switch (reason) {
        case KVM_EXIT_IO:
          this.handleIo();
          break;
        case KVM_EXIT_MMIO:
          this.handleMmio();
          break;
        case KVM_EXIT_INTR:
          if (Atomics.load(this.control, CTL_STOP) !== 0) return { kind: 'stopped' };
          this.run8[RUN.immediateExit] = 0;
          break;
        case KVM_EXIT_IRQ_WINDOW_OPEN:
          break;
        case KVM_EXIT_HLT:
          return { kind: 'hlt' };
        case KVM_EXIT_SHUTDOWN:
          return { kind: 'triple-fault', regs: this.regsText() };
        case KVM_EXIT_SYSTEM_EVENT: {
          const type = dv.getUint32(RUN.systemEventType, true);
          if (type === KVM_SYSTEM_EVENT_SHUTDOWN) return { kind: 'poweroff' };
          if (type === KVM_SYSTEM_EVENT_RESET) return { kind: 'reset' };
          if (type === KVM_SYSTEM_EVENT_CRASH) return this.fail('guest crashed (KVM_SYSTEM_EVENT_CRASH)');
          return this.fail(`unknown system event ${type}`);
        }
        case KVM_EXIT_INTERNAL_ERROR: {
          const sub = dv.getUint32(RUN.internalSuberror, true);
          const n = Math.min(dv.getUint32(RUN.internalNdata, true), 16);
          const data: string[] = [];
          for (let i = 0; i < n; i++) data.push('0x' + dv.getBigUint64(RUN.internalData + i * 8, true).toString(16));
          return this.fail(`KVM internal error, suberror ${sub}${n ? ` data [${data.join(', ')}]` : ''}`);
        }
        case KVM_EXIT_FAIL_ENTRY: {
          const hw = dv.getBigUint64(RUN.failEntryReason, true);
          return this.fail(`KVM entry failed, hardware reason 0x${hw.toString(16)}`);
        }
        default:
          return this.fail(`unexpected exit ${exitName(reason)}`);
      }
    }
  }

  private handleIo(): void {
    const dv = this.dv;
    const dir = this.run8[RUN.ioDirection];
    const size = this.run8[RUN.ioSize];
    const port = dv.getUint16(RUN.ioPort, true);
    const count = dv.getUint32(RUN.ioCount, true);
    const off = dv.getUint32(RUN.ioDataOffset, true);
    const bus = this.io.pio;
    if (count === 1) {
      const data = this.ioView(off, size);
      const ok = dir === KVM_EXIT_IO_OUT ? bus.write(port, data) : bus.read(port, data);
      if (!ok) this.unhandled('pio', port, size, dir === KVM_EXIT_IO_OUT);
      return;
    }
    if (off + count * size > this.run8.length) return;
    for (let i = 0; i < count; i++) {
      const data = this.run8.subarray(off + i * size, off + (i + 1) * size);
      const ok = dir === KVM_EXIT_IO_OUT ? bus.write(port, data) : bus.read(port, data);
      if (!ok) this.unhandled('pio', port, size, dir === KVM_EXIT_IO_OUT);
    }
  }

  private handleMmio(): void {
    const dv = this.dv;
    const addr = Number(dv.getBigUint64(RUN.mmioPhysAddr, true));
    const len = dv.getUint32(RUN.mmioLen, true);
    const isWrite = this.run8[RUN.mmioIsWrite] !== 0;
    const data = this.mmioViews[len > 8 ? 8 : len];
    const ok = isWrite ? this.io.mmio.write(addr, data) : this.io.mmio.read(addr, data);
    if (!ok) this.unhandled('mmio', addr, len, isWrite);
  }

  /** Views of the kvm_run data area; KVM uses one fixed offset, so they are made once. */
  private ioView(off: number, size: number): Uint8Array {
    if (off !== this.ioOff) {
      if (off < 0 || off + 8 > this.run8.length) return new Uint8Array(size);
      this.ioOff = off;
      this.ioViews = [];
    }
    if (size === 1 || size === 2 || size === 4) {
      return (this.ioViews[size] ??= this.run8.subarray(off, off + size));
    }
    return this.run8.subarray(off, Math.min(off + size, this.run8.length));
  }

  private unhandled(space: string, addr: number, len: number, write: boolean): void {
    if (this.unhandledLogged >= 32) return;
    this.unhandledLogged++;
    log.debug({ vcpu: this.vcpu.id, space, addr: '0x' + addr.toString(16), len, write }, 'access to no device');
  }

  private regsText(): string {
    try {
      return formatRegs(this.vcpu.getRegs(), this.vcpu.getSregs());
    } catch (e) {
      return `(registers unavailable: ${(e as Error).message})`;
    }
  }

  private fail(message: string): VcpuStop {
    return { kind: 'error', message, regs: this.regsText() };
  }
}
