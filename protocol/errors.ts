/** Base of every kumo error: a message plus structured context for logs and API replies. */
export class KumoError extends Error {
  readonly context: Record<string, unknown>;
  constructor(message: string, context: Record<string, unknown> = {}) {
    super(message);
    this.name = new.target.name;
    this.context = context;
  }
}
