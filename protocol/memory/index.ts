export { GuestMemoryError } from './errors.js';
export { GuestRegion, CHUNK_SIZE, CHUNK_OVERLAP, type MemoryRegionSpec } from './region.js';
export { GuestMemory, mappableFileSize, type MemorySegment, type RegionView, type ViewOptions } from './guest-memory.js';
