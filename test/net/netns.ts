// Network-namespace fixture: every test gets its own namespace, so no traffic leaves it and the
// host's interfaces are never touched.
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync } from 'node:fs';

let counter = 0;

/** Why network-namespace tests cannot run here, or null when they can. */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (ip netns, /dev/net/tun)';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
  } catch {
    return 'iproute2 (ip) is not installed';
  }
  return null;
}

export class NetNs {
  private constructor(readonly name: string) {}

  static create(tag: string): NetNs {
    const name = `kumo-${tag}-${process.pid}-${counter++}`;
    execFileSync('ip', ['netns', 'add', name]);
    const ns = new NetNs(name);
    ns.ip('link', 'set', 'lo', 'up');
    return ns;
  }

  /** `ip -n NS ...` */
  ip(...args: string[]): string {
    return execFileSync('ip', ['-n', this.name, ...args], { encoding: 'utf8' });
  }

  /** Runs a command inside the namespace and returns its stdout. */
  exec(cmd: string, args: string[], input?: string): string {
    return execFileSync('ip', ['netns', 'exec', this.name, cmd, ...args], { encoding: 'utf8', input, timeout: 60_000 });
  }

  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.name, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
  }

  delete(): void {
    try {
      execFileSync('ip', ['netns', 'del', this.name], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
}
