import { sendDgram, unixDgramConnect } from './sys/socket.js';
import { hostPid } from './sys/proc.js';

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

  private constructor(
    private readonly fd: number,
    private readonly ident: string,
  ) {}

  /** null when there is no syslog socket to connect to. */
  static open(ident: string, path = SYSLOG_SOCKET): SyslogSink | null {
    // The first local time the process formats makes ICU find the host's time zone (realpath of /etc/localtime:
    // readlink). Done here, before any thread's seccomp filter, not by the first line a filtered thread logs.
    timestamp(new Date());
    try {
      return new SyslogSink(unixDgramConnect(path), ident);
    } catch {
      return null;
    }
  }

  write(line: string): void {
    const msg = line.endsWith('\n') ? line.slice(0, -1) : line;
    sendDgram(this.fd, enc.encode(`<${LOG_DAEMON | severity(msg)}>${timestamp(new Date())} ${this.ident}[${this.pid}]: ${msg}`));
  }
}
