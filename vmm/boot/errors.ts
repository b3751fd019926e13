import { KumoError } from '../../protocol/errors.js';

/** The kernel/initramfs/cmdline cannot be loaded (bad format, does not fit in guest RAM...). */
export class BootError extends KumoError {}
