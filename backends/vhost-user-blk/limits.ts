/** Limits advertised in the virtio-blk config space and enforced on requests. */
export const BlkLimits = {
  /** Most data segments per request (Cloud Hypervisor: 128 descriptors minus header and status). */
  segMax: 126,
  /** Largest data segment; as Cloud Hypervisor advertises it. */
  sizeMax: 65535,
  /** DISCARD / WRITE_ZEROES: per-range sector cap and ranges per request. */
  maxDiscardSectors: 0x3fffff, // 2 GiB - 512 per range
  maxDiscardSeg: 32,
  maxWriteZeroesSectors: 0x3fffff,
  maxWriteZeroesSeg: 32,
} as const;
