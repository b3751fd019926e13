import { KumoError } from '../../protocol/errors.js';

/** Guest RAM cannot be set up as configured (hugepages missing, size not allowed...). */
export class GuestRamError extends KumoError {}
