import { pino, type Logger } from 'pino';

export type { Logger };

const level = process.env.KUMO_LOG ?? process.env.LOG_LEVEL ?? 'info';
// Logs go to stderr so stdout stays free for a guest console or a tool's report.
const root: Logger = pino({ level, base: { pid: process.pid } }, pino.destination(2));

export function logger(name: string, bindings: Record<string, unknown> = {}): Logger {
  return root.child({ name, ...bindings });
}

export function setLogLevel(l: string): void {
  root.level = l;
}
