import { KumoError } from '../../protocol/errors.js';

/** A VM configuration that parses but cannot work (conflicting or out-of-range values). */
export class ConfigError extends KumoError {}
