import { KumoError } from '../../protocol/errors.js';

/** kumo-vu failures: negotiation, a device answering wrongly, timeouts. */
export class KumoVuError extends KumoError {}
