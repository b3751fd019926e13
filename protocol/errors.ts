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

/** An error in one line for a command's stderr: the message, and the context of kumo's own errors when there is one. */
export function errorLine(e: unknown): string {
  const ctx = e instanceof KumoError && Object.keys(e.context).length ? ` ${JSON.stringify(e.context)}` : '';
  return `${e instanceof Error ? e.message : String(e)}${ctx}`;
}
