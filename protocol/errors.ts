/** Base of every kumo error: a message plus structured context for logs and API replies. */
export class KumoError extends Error {
  readonly context: Record<string, unknown>;
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message);
    this.name = new.target.name;
    this.context = context;
  }
}

/**
 * How the program was started or the host it runs on stops it (options, permissions, a host limit or policy): the
 * message names the cause and what to do, and is reported in one line, without a stack.
 */
export class SetupError extends KumoError {}
