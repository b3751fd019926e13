import { KumoError } from '../../protocol/errors.js';

/** The guest image could not be built (download, extraction, kernel format, modules). */
export class ImageError extends KumoError {}
