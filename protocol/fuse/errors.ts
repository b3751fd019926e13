import { KumoError } from '../errors.js';

/** A FUSE message that cannot be decoded (short, inconsistent lengths, out-of-range values). */
export class FuseProtocolError extends KumoError {}
