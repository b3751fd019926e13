import { KumoError } from '../errors.js';

/** A guest-physical (or front-end user) range that is not wholly inside one memory region, or a bad region table. */
export class GuestMemoryError extends KumoError {}
