// Activation events carry each queue's MSI GSI, which the vhost-user link needs for SET_VRING_CALL.
import type { PlatformEvent } from '../devices/types.js';
import type { VirtioPciDevice } from '../virtio/pci-transport.js';
import { VhostUserDevice } from './device.js';

/**
 * Wraps the main thread's virtio event handler (VirtioActivator.handle): before a vhost-user device
 * is activated, its link learns the GSIs of its queues.
 */
export function withVhostUserEvents(
  transports: readonly VirtioPciDevice[],
  next: (ev: PlatformEvent) => boolean,
): (ev: PlatformEvent) => boolean {
  return (ev) => {
    if (ev.type === 'virtio-activate') {
      const dev = transports[ev.device]?.device;
      if (dev instanceof VhostUserDevice) dev.link?.noteQueues(ev.queues);
    }
    return next(ev);
  };
}
