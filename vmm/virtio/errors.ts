import { KumoError } from '../../protocol/errors.js';

/** A virtio device the guest set up wrongly (its rings, its status sequence). */
export class VirtioError extends KumoError {}
