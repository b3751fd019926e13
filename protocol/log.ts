import { writeSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { SyslogSink } from './syslog-sink.js';

export type { Logger };

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);
/**
 * KUMO_LOG only: a generic LOG_LEVEL in a launcher's environment (Kata passes its own on) is not ours, and a level
 * pino does not know would end the process before it starts.
 */
const level = LEVELS.has(process.env.KUMO_LOG ?? '') ? (process.env.KUMO_LOG as string) : 'info';
/** Set by useSyslog() so that worker threads started afterwards log to syslog too. */
const SYSLOG_ENV = 'KUMO_LOG_SYSLOG_IDENT';

interface LineSink {
  write(line: string): void;
}
const pause = new Int32Array(new SharedArrayBuffer(4));
/** How long a line waits for room in a full non-blocking stderr before it is dropped. */
const STDERR_WAIT_MS = 1000;
/**
 * Set when a line was dropped because stderr stayed full: later lines are dropped at once (not waited for) until a
 * write goes through again. Waiting a second for every line let a guest stall a queue thread, which logs what the
 * guest did wrong, for a second per line (20 s a second at the rate limit) while the reader of stderr was stuck.
 */
let stalled = false;
/**
 * Logs go to stderr so stdout stays free for a guest console or a tool's report; --syslog moves them.
 * Synchronous: a queue worker thread blocks in its epoll loop, so an async write's completion would never run
 * there and every later line of that thread stayed buffered (its warnings were lost). A line that cannot be
 * written (a full disk, /dev/full, a closed pipe) is dropped, as qemu-storage-daemon and virtiofsd drop theirs:
 * pino's own destination threw such errors out of whatever code logged, and a back-end died with its guest's disk.
 */
const stderrSink: LineSink = {
  write(line: string): void {
    let buf = Buffer.from(line);
    // Measured on the clock, not counted in 1 ms naps: on a loaded host a thousand naps took 8 s.
    for (let until = 0; buf.length > 0;) {
      try {
        buf = buf.subarray(writeSync(2, buf));
        stalled = false;
      } catch (e) {
        // A non-blocking stderr whose reader is slow: wait for it up to STDERR_WAIT_MS, then drop the line (and,
        // while it stays full, the lines after it without waiting).
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') return;
        const now = Date.now();
        if (until === 0) until = now + STDERR_WAIT_MS;
        if (stalled || now >= until) {
          stalled = true;
          return;
        }
        Atomics.wait(pause, 0, 0, 1);
      }
    }
  },
};
let sink: LineSink = (process.env[SYSLOG_ENV] && SyslogSink.open(process.env[SYSLOG_ENV])) || stderrSink;
const root: Logger = pino({ level, base: { pid: process.pid } }, { write: (line: string) => sink.write(line) });

/**
 * Sends every later log line of this thread, and of worker threads started after this call, to the
 * local syslog as `ident`. Returns false, leaving logs on stderr, when there is no syslog socket.
 */
export function useSyslog(ident: string): boolean {
  const s = SyslogSink.open(ident);
  if (s === null) return false;
  sink = s;
  process.env[SYSLOG_ENV] = ident;
  return true;
}

export function logger(name: string, bindings: Record<string, unknown> = {}): Logger {
  return root.child({ name, ...bindings });
}

/** This thread's level, and that of worker threads started after this call (they read KUMO_LOG). */
export function setLogLevel(l: string): void {
  root.level = l;
  process.env.KUMO_LOG = l;
}

/** One message's share of a WarnLimiter: lines sent in the current window, and those held back since the last one sent. */
interface Budget {
  windowStart: number;
  sent: number;
  held: number;
  /** The level of the lines held back (the summary goes out at it). */
  level: 'info' | 'warn' | 'error';
}

/** This thread's limiters with lines held back: their counts go out once their window ends (flushHeldWarnings). */
const holding = new Set<WarnLimiter>();

/**
 * Says how many lines each limiter held back, for every message whose window has ended since: a flood that stops is
 * still counted. Runs from a timer in threads with an event loop; threads that never return to theirs (the
 * vhost-user queue workers) call it from their own loop.
 */
export function flushHeldWarnings(now = performance.now()): void {
  if (holding.size === 0) return;
  for (const l of [...holding]) if (l.flushDue(now)) holding.delete(l);
}

/** Distinct messages a WarnLimiter keeps a budget for; any beyond share one (messages are literals, but not all). */
const MAX_MESSAGES = 64;

/**
 * Lines a peer can cause at will (a guest's malformed requests or device resets, a front-end's refused messages): at most `burst`
 * lines of each message per `windowMs` reach the log, and the count of those held back goes out with the next one that does, so a
 * hostile guest cannot fill the host's disk or syslog through the daemon. Each message has its own budget, so that a flood
 * of one does not hide another (a refused INIT during a flood of INITs); all of them together get twice `burst`.
 */
export class WarnLimiter {
  private readonly budgets = new Map<string, Budget>();
  private readonly shared: Budget = { windowStart: -Infinity, sent: 0, held: 0, level: 'warn' };
  private readonly total: Budget = { windowStart: -Infinity, sent: 0, held: 0, level: 'warn' };
  private flushTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly burst = 20,
    private readonly windowMs = 1000,
  ) {}

  warn(obj: Record<string, unknown>, msg: string): void {
    this.emit('warn', obj, msg);
  }

  info(obj: Record<string, unknown>, msg: string): void {
    this.emit('info', obj, msg);
  }

  error(obj: Record<string, unknown>, msg: string): void {
    this.emit('error', obj, msg);
  }

  private budget(msg: string): Budget {
    let b = this.budgets.get(msg);
    if (b === undefined) {
      if (this.budgets.size >= MAX_MESSAGES) return this.shared;
      b = { windowStart: -Infinity, sent: 0, held: 0, level: 'warn' };
      this.budgets.set(msg, b);
    }
    return b;
  }

  private emit(level: 'info' | 'warn' | 'error', obj: Record<string, unknown>, msg: string): void {
    if (!this.log.isLevelEnabled(level)) return;
    const b = this.budget(msg);
    const now = performance.now();
    for (const x of [b, this.total]) {
      if (now - x.windowStart >= this.windowMs) {
        x.windowStart = now;
        x.sent = 0;
      }
    }
    if (b.sent >= this.burst || this.total.sent >= 2 * this.burst) {
      b.held++;
      b.level = level;
      if (!holding.has(this)) {
        holding.add(this);
        this.scheduleFlush();
      }
      return;
    }
    b.sent++;
    this.total.sent++;
    if (b.held > 0) {
      obj = { ...obj, heldBack: b.held };
      b.held = 0;
    }
    this.log[level](obj, msg);
  }

  private scheduleFlush(): void {
    if (this.flushTimer !== null) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      if (this.flushDue(performance.now())) holding.delete(this);
      else this.scheduleFlush();
    }, this.windowMs + 10);
    this.flushTimer.unref();
  }

  /** Logs the held-back count of each message whose window has ended; true once nothing is held. */
  flushDue(now: number): boolean {
    let left = false;
    const due = (msg: string, b: Budget): void => {
      if (b.held === 0) return;
      // Both the message's window and the limiter's: a count said now would take a line the next window may need.
      if (now - b.windowStart < this.windowMs || now - this.total.windowStart < this.windowMs) {
        left = true;
        return;
      }
      // summary: the line stands for the held-back ones only (no event of its own).
      if (this.log.isLevelEnabled(b.level)) this.log[b.level]({ heldBack: b.held, summary: true }, msg);
      b.held = 0;
    };
    for (const [msg, b] of this.budgets) due(msg, b);
    due('(other messages)', this.shared);
    return !left;
  }
}
