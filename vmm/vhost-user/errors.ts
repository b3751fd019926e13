import { KumoError } from '../../protocol/errors.js';

/** A vhost-user device the VMM cannot attach or drive (backend missing, refusing, or incompatible). */
export class VhostUserDeviceError extends KumoError {}
