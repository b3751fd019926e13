import { KumoError } from '../../protocol/errors.js';

/** A KVM setup or run failure (missing capability, refused ioctl, bad vCPU state). */
export class KvmError extends KumoError {}
