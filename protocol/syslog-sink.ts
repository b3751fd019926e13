import { isMainThread } from 'node:worker_threads';
import { sendDgram, unixDgramConnect } from './sys/socket.js';
import { closeQuiet } from './sys/fd.js';
import { hostPid } from './sys/proc.js';

const ECONNREFUSED = 111;
const ENOTCONN = 107;

/** Where syslog listens; KUMO_SYSLOG_SOCKET overrides it (tests). */
export const SYSLOG_SOCKET = process.env.KUMO_SYSLOG_SOCKET ?? '/dev/log';
const LOG_DAEMON = 3 << 3;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const enc = new TextEncoder();

/** pino level -> syslog severity (trace/debug 7, info 6, warn 4, error 3, fatal 2). */
function severity(line: string): number {
  const m = /"level":(\d+)/.exec(line);
  const l = m ? Number(m[1]) : 30;
  return l >= 60 ? 2 : l >= 50 ? 3 : l >= 40 ? 4 : l >= 30 ? 6 : 7;
}

function timestamp(d: Date): string {
  const two = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/**
 * pino lines as RFC 3164 datagrams to the local syslog socket, facility daemon, as glibc's syslog(3)
 * writes them ("<PRI>Mmm dd hh:mm:ss ident[pid]: message"). A full or vanished syslog drops the line
 * rather than stalling the daemon.
 */
export class SyslogSink {
  /** The pid syslog readers know the daemon by (its pid file's): inside its own pid namespace process.pid is 1. */
  private readonly pid = hostPid();

  /** When the main thread last tried to connect again (syslog restarted: its socket is a new one). */
  private reconnectedAt = 0;

  private constructor(
    private fd: number,
    private readonly ident: string,
    private readonly path: string,
  ) {}

  /** null when there is no syslog socket to connect to. */
  static open(ident: string, path = SYSLOG_SOCKET): SyslogSink | null {
    // The first local time the process formats makes ICU find the host's time zone (realpath of /etc/localtime:
    // readlink). Done here, before any thread's seccomp filter, not by the first line a filtered thread logs.
    timestamp(new Date());
    try {
      return new SyslogSink(unixDgramConnect(path), ident, path);
    } catch {
      return null;
    }
  }

  write(line: string): void {
    const msg = line.endsWith('\n') ? line.slice(0, -1) : line;
    const data = enc.encode(`<${LOG_DAEMON | severity(msg)}>${timestamp(new Date())} ${this.ident}[${this.pid}]: ${msg}`);
    const r = sendDgram(this.fd, data);
    // ECONNREFUSED/ENOTCONN: the syslog daemon restarted (journald, rsyslog) and listens on a new socket. As glibc's
    // syslog(3), connect again and resend, at most once a second; only on the main thread (the request threads'
    // seccomp filter does not allow socket/connect).
    if ((r === -ECONNREFUSED || r === -ENOTCONN) && isMainThread && Date.now() - this.reconnectedAt >= 1000) {
      this.reconnectedAt = Date.now();
      try {
        const fd = unixDgramConnect(this.path);
        closeQuiet(this.fd);
        this.fd = fd;
        sendDgram(this.fd, data);
      } catch {
        /* still no syslog: the line is dropped */
      }
    }
  }
}
