export { VirtqueueError, ChainError, RingMemoryError, type ChainReach } from './errors.js';
export {
  type QueueLayout,
  type Segment,
  MAX_QUEUE_SIZE,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  DESC_SIZE,
  USED_ELEM_SIZE,
  ringSizes,
  validateLayout,
  isQueueSize,
  compactLayout,
  alignUp,
  vringNeedEvent,
} from './layout.js';
export { DescriptorChain, readFromChain, writeToChain } from './chain.js';
export { DeviceQueue, type DeviceQueueOptions } from './device-queue.js';
export { DriverQueue, type DriverQueueOptions, type UsedBuffer } from './driver-queue.js';
export { GuestAllocator, GuestAllocatorError } from './allocator.js';
export { InflightRing, inflightRegionSize, INFLIGHT_VERSION, type InflightRecovery } from './inflight.js';
export { DirtyLog, RingDirtyLog, DIRTY_LOG_PAGE } from './dirty-log.js';
