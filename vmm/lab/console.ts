/** Marker lines printed by the L1 init (vmm/image/init/l1-init.sh). */
const START = /KUMO-LAB-START uptime=([\d.]+)/;
const EXIT = /KUMO-LAB-EXIT rc=(\d+)/;
const ERROR = /KUMO-LAB-ERROR (.*)/;

export interface ConsoleEvents {
  onOutput(text: string): void;           // the command's output, as it arrives
  onStart(l1UptimeS: number): void;
  onExit(code: number): void;
  onError(message: string): void;
}

/**
 * Splits L1's serial console into boot log (before START) and command output (after it), strips the
 * tty's CR, and finds the exit marker even when the command's last line had no newline.
 */
export class LabConsole {
  private buf = '';
  private started = false;
  private done = false;
  readonly bootLog: string[] = [];

  constructor(private readonly ev: ConsoleEvents) {}

  push(chunk: string): void {
    if (this.done) return;
    this.buf += chunk.replace(/\r/g, '');
    let nl: number;
    while (!this.done && (nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      this.line(line);
    }
    // Partial line: pass it on now, except a tail that may be the beginning of the exit marker.
    if (this.started && !this.done && this.buf) {
      const keep = markerPrefixTail(this.buf);
      const out = this.buf.slice(0, this.buf.length - keep);
      if (out) this.ev.onOutput(out);
      this.buf = this.buf.slice(this.buf.length - keep);
    }
  }

  private line(line: string): void {
    if (!this.started) {
      const s = START.exec(line);
      if (s) {
        this.started = true;
        this.ev.onStart(Number(s[1]));
        return;
      }
      const e = ERROR.exec(line);
      if (e) this.ev.onError(e[1]);
      const x = EXIT.exec(line);
      if (x) {
        this.done = true;
        this.ev.onExit(Number(x[1]));
        return;
      }
      this.bootLog.push(line);
      return;
    }
    const x = EXIT.exec(line);
    if (x) {
      const before = line.slice(0, x.index);
      if (before) this.ev.onOutput(before);
      this.done = true;
      this.ev.onExit(Number(x[1]));
      return;
    }
    this.ev.onOutput(line + '\n');
  }
}

const MARKER = 'KUMO-LAB-EXIT rc=';

/** Length of the longest tail of `s` that could still grow into an exit marker line. */
function markerPrefixTail(s: string): number {
  const at = s.lastIndexOf(MARKER);
  if (at >= 0) return s.length - at;
  for (let n = Math.min(MARKER.length - 1, s.length); n > 0; n--) {
    if (MARKER.startsWith(s.slice(s.length - n))) return n;
  }
  return 0;
}
