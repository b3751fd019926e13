import type { Interrupt, InterruptRoutes, MsiMessage, PlatformEvent } from '../../vmm/devices/types.js';

export class CountingIrq implements Interrupt {
  count = 0;
  trigger(): void {
    this.count++;
  }
}

export class RecordingRoutes implements InterruptRoutes {
  readonly log: string[] = [];
  readonly routes = new Map<number, MsiMessage>();
  readonly masked = new Map<number, boolean>();
  setMsiRoute(gsi: number, msg: MsiMessage): void {
    this.routes.set(gsi, { ...msg });
    this.log.push(`route ${gsi} ${msg.addressLo.toString(16)} ${msg.data.toString(16)}`);
  }
  clearMsiRoute(gsi: number): void {
    this.routes.delete(gsi);
    this.log.push(`clear ${gsi}`);
  }
  setMasked(gsi: number, masked: boolean): void {
    this.masked.set(gsi, masked);
    this.log.push(`${masked ? 'mask' : 'unmask'} ${gsi}`);
  }
}

export function u8(...v: number[]): Uint8Array {
  return Uint8Array.from(v);
}

export function le(value: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
  return b;
}

export function readLe(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + b[i];
  return v;
}

export type Events = PlatformEvent[];
