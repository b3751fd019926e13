import { KumoError } from '../../protocol/errors.js';

/** The lab could not run the command (L1 did not boot, virtiofsd failed, no exit marker). */
export class LabError extends KumoError {}

/** The command (or L1's boot) ran past its timeout; `output` holds all it printed (context: the tail). */
export class LabTimeoutError extends LabError {
  output = '';
}
