import { BootError } from './errors.js';

// Offsets into the real-mode header (Linux boot protocol, Documentation/arch/x86/boot.rst).
export const HDR = {
  setupSects: 0x1f1,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatable: 0x234,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

const XLF_KERNEL_64 = 1;

export interface BzImage {
  version: number;
  setupSects: number;
  /** Bytes 0x1f1 .. end of the setup header, copied into the zero page. */
  setupHeader: Buffer;
  /** The protected-mode kernel (loaded at 1 MiB). */
  payload: Buffer;
  cmdlineMax: number;
  initrdAddrMax: number;
  initSize: number;
}

export function isBzImage(b: Buffer): boolean {
  return b.length >= 0x264 && b.readUInt16LE(HDR.bootFlag) === 0xaa55 && b.toString('latin1', HDR.header, HDR.header + 4) === 'HdrS';
}

export function parseBzImage(b: Buffer): BzImage {
  if (!isBzImage(b)) throw new BootError('not a bzImage (no HdrS setup header)');
  const version = b.readUInt16LE(HDR.version);
  if (version < 0x020c) {
    throw new BootError('bzImage boot protocol too old for a 64-bit entry (needs 2.12)', { version: version.toString(16) });
  }
  if ((b.readUInt16LE(HDR.xloadflags) & XLF_KERNEL_64) === 0) {
    throw new BootError('bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)');
  }
  const setupSects = b[HDR.setupSects] || 4;
  const payloadOff = (setupSects + 1) * 512;
  if (payloadOff >= b.length) throw new BootError('bzImage is truncated (setup sectors past end of file)', { setupSects });
  const hdrEnd = Math.min(HDR.header + b[HDR.jump + 1], 0x290);
  return {
    version,
    setupSects,
    setupHeader: Buffer.from(b.subarray(HDR.setupSects, hdrEnd)),
    payload: b.subarray(payloadOff),
    cmdlineMax: b.readUInt32LE(HDR.cmdlineSize) || 255,
    initrdAddrMax: b.readUInt32LE(HDR.initrdAddrMax) || 0x37ffffff,
    initSize: b.readUInt32LE(HDR.initSize),
  };
}
