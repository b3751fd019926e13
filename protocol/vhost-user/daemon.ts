import { EventEmitter } from 'node:events';
import { existsSync, lstatSync, unlinkSync, type BigIntStats } from 'node:fs';
import { dirname } from 'node:path';
import { logger, WarnLimiter, type Logger } from '../log.js';
import { closeQuiet, eventfd, eventfdWrite } from '../sys/fd.js';
import { Epoll, EPOLLIN } from '../sys/epoll.js';
import { leaveRemovedWorkingDirectory } from '../sys/proc.js';
import { accept, acceptAsync, adoptListener, shutdown, unixConnect, unixListen } from '../sys/socket.js';
import type { VhostUserBackend } from './backend-types.js';
import { VhostUserChannel } from './channel.js';
import { decodeRequest } from './codec.js';
import { VhostUserError, VhostUserSocketError } from './errors.js';
import { SysError } from '../sys/libc.js';
import { requestName } from './messages.js';
import { Session } from './session.js';
import { WorkerPool } from './worker-pool.js';

export interface DaemonOptions {
  /** Where to listen (or, in client mode, connect). Optional only with listenFd. */
  socketPath?: string;
  /** The socket file's mode (virtiofsd: 0700 whatever the umask); default: what the umask gives, as qemu-storage-daemon. */
  socketMode?: number;
  /** A listening socket inherited from the parent (`--fd=N`, the vhost-user backend convention), used instead of socketPath. */
  listenFd?: number;
  /** server (default): listen on socketPath; client: connect to it (Cloud Hypervisor's `--vhost-user-*` server mode). */
  mode?: 'server' | 'client';
  /** End run() after the first front-end disconnects (virtiofsd behaviour); default: serve the next one. */
  exitOnDisconnect?: boolean;
  /** Client mode: keep retrying the connect this long (ms), every 100 ms. Default 60 s like Cloud Hypervisor. */
  connectTimeoutMs?: number;
  /** Logger name (default "vhost-user"). */
  name?: string;
  /**
   * Upper bound of stop(): winding down the connection, stopping the rings (in-flight requests drained)
   * and joining the queue workers. Workers still busy at the deadline are terminated or left behind.
   * Default 1000 ms.
   */
  stopTimeoutMs?: number;
}

export interface DaemonEvents {
  connected: [];
  /** The front-end went away; `error` is set when the daemon closed the connection because of it. */
  disconnected: [error: Error | null];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** Pause after a failed accept (an fd limit frees up only as the host's other work goes on). */
const ACCEPT_RETRY_MS = 500;

/**
 * Serves one vhost-user front-end at a time for a device back-end. The main thread owns the socket, the
 * memory table and ring state; queue worker threads run the rings (see queue-worker.ts).
 *
 *   const d = new VhostUserDaemon(backend, { socketPath });
 *   await d.start();   // workers loaded, socket listening
 *   await d.run();     // until stop() (or the first disconnect with exitOnDisconnect)
 */
export class VhostUserDaemon extends EventEmitter<DaemonEvents> {
  readonly log: Logger;
  private pool: WorkerPool | null = null;
  private listenFd = -1;
  /** The socket file this daemon bound (not an inherited listener's): removed again when it stops. */
  private socketFile: BigIntStats | null = null;
  private channel: VhostUserChannel | null = null;
  private stopping = false;
  /** Wakes acceptInherited() at stop(), while it waits. */
  private wakeAccept: (() => void) | null = null;
  private stopped: Promise<void> | null = null;
  /** Date.now() by which stop() must be done (set when it starts). */
  private stopDeadline = 0;
  private serving: Promise<void> | null = null;
  /** Connections served so far. */
  served = 0;
  /**
   * A front-end can connect, be refused, and connect again as fast as it likes: what each connection says goes
   * through limiters that outlive it (a limiter per connection let 20 refusals a connection through).
   */
  private readonly connLog: WarnLimiter;
  private readonly refusals: WarnLimiter;

  constructor(
    private readonly backend: VhostUserBackend,
    private readonly opts: DaemonOptions,
  ) {
    super();
    const where = opts.listenFd !== undefined && (opts.mode ?? 'server') === 'server' ? `fd ${opts.listenFd}` : opts.socketPath;
    if (where === undefined || where === '') throw new VhostUserError('a socket path (or, listening, an inherited fd) is required');
    this.log = logger(opts.name ?? 'vhost-user', { socket: where });
    this.connLog = new WarnLimiter(this.log);
    this.refusals = new WarnLimiter(this.log);
  }

  async start(): Promise<void> {
    const b = this.backend;
    if (!Number.isInteger(b.numQueues) || b.numQueues < 1 || b.numQueues > 256) {
      throw new VhostUserError('numQueues must be 1..256', { numQueues: b.numQueues });
    }
    const qpw = Math.max(1, b.queuesPerWorker ?? 1);
    leaveRemovedWorkingDirectory([this.opts.listenFd === undefined ? this.opts.socketPath : undefined]);
    this.pool = await WorkerPool.spawn({
      count: Math.ceil(b.numQueues / qpw),
      module: b.queueWorker.module,
      data: b.queueWorker.data,
      signalHelper: b.queueWorker.signalHelper,
      logName: this.opts.name ?? 'vhost-user',
      log: this.log,
    });
    if (this.stopping) {
      // stop() came while the workers were loading: it found no pool to close.
      await this.pool.close();
      this.pool = null;
      return;
    }
    if ((this.opts.mode ?? 'server') === 'server') {
      try {
        if (this.opts.listenFd !== undefined) this.listenFd = adoptListener(this.opts.listenFd);
        else {
          this.listenFd = listenOn(this.opts.socketPath as string, this.opts.socketMode);
          this.socketFile = lstatSync(this.opts.socketPath as string, { bigint: true });
        }
      } catch (e) {
        // Workers idle in epoll would keep the process alive (even through process.exit): end them first.
        await this.pool.close();
        this.pool = null;
        throw e;
      }
      this.log.info('listening');
    }
  }

  async run(): Promise<void> {
    if (this.stopping) return;
    if (this.pool === null) throw new VhostUserError('run() before start()');
    while (!this.stopping) {
      let fd: number;
      try {
        fd = await this.nextConnection();
      } catch (e) {
        if (this.stopping) break;
        // A listener of our own outlives a failed accept (EMFILE at the fd limit, a connection reset before it was
        // taken): ending here would remove the socket, and no front-end could come back once fds are free again.
        if (this.listenFd < 0 || e instanceof VhostUserSocketError) throw e;
        this.log.warn({ err: e }, 'accepting a front-end failed; listening on');
        await sleep(ACCEPT_RETRY_MS);
        continue;
      }
      if (this.stopping) {
        if (fd >= 0) closeQuiet(fd);
        break;
      }
      // One front-end for the daemon's life: a second one is refused at connect (as by virtiofsd, which drops its
      // listener and socket file once it has accepted), not left waiting for a session that never comes. An inherited
      // listener stays the parent's: the next front-end waits there for the next daemon.
      if (this.opts.exitOnDisconnect) this.closeListener();
      this.serving = this.serve(fd);
      await this.serving;
      this.serving = null;
      if (this.opts.exitOnDisconnect) break;
    }
  }

  private closeListener(): void {
    if (this.listenFd < 0) return;
    // shutdown() wakes an accept4 blocked on the thread pool; not on an inherited listener (see nextConnection).
    if (this.opts.listenFd === undefined) shutdown(this.listenFd);
    closeQuiet(this.listenFd);
    this.listenFd = -1;
    this.removeSocketFile();
  }

  /** Unlinks the socket path if it is still the socket this daemon bound (a newer daemon may own it now). */
  private removeSocketFile(): void {
    const mine = this.socketFile;
    this.socketFile = null;
    if (mine === null) return;
    const path = this.opts.socketPath as string;
    try {
      const now = lstatSync(path, { bigint: true, throwIfNoEntry: false });
      if (now?.isSocket() && now.dev === mine.dev && now.ino === mine.ino) unlinkSync(path);
    } catch (e) {
      this.log.warn({ err: (e as Error).message, path }, 'could not remove the socket file');
    }
  }

  /** Idempotent and bounded by `stopTimeoutMs`: every caller gets the same promise. */
  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    this.stopping = true;
    this.wakeAccept?.();
    this.stopDeadline = Date.now() + (this.opts.stopTimeoutMs ?? 1000);
    this.channel?.close();
    // Let the current connection wind down (its session resets the workers) before the workers go.
    if (this.serving !== null) await this.within(this.serving);
    this.closeListener();
    const pool = this.pool;
    this.pool = null;
    // Even past the deadline the workers get a moment to answer their exit (it releases fds and mappings).
    await pool?.close(Math.max(50, this.stopDeadline - Date.now()));
  }

  private async within(p: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((r) => {
      timer = setTimeout(r, Math.max(0, this.stopDeadline - Date.now()));
    });
    try {
      await Promise.race([p, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** How long the session may wait for the workers to reset: bounded by stop()'s deadline once stopping. */
  private resetTimeoutMs(): number | undefined {
    return this.stopping ? Math.max(50, this.stopDeadline - Date.now()) : undefined;
  }

  private async nextConnection(): Promise<number> {
    // An inherited listener (--fd) is shared with the parent (systemd socket activation): shutting it down to wake
    // accept4 would refuse every later front-end there too, so stop() wakes this wait instead.
    if (this.listenFd >= 0) return this.opts.listenFd !== undefined ? this.acceptInherited(this.listenFd) : acceptAsync(this.listenFd);
    const until = Date.now() + (this.opts.connectTimeoutMs ?? 60_000);
    for (;;) {
      try {
        return unixConnect(this.opts.socketPath as string);
      } catch (e) {
        if (this.stopping || Date.now() >= until) {
          const why = e instanceof SysError ? e.code : String(e);
          throw new VhostUserSocketError(`cannot connect to the front-end at ${this.opts.socketPath}: ${why}`, { socket: this.opts.socketPath });
        }
        await sleep(100);
      }
    }
  }

  /**
   * The next front-end on an inherited listener, or -1 once stopping. It is waited for in epoll beside an eventfd that
   * stop() signals: an accept4 blocked on the thread pool could be woken only by shutting the socket down, and the
   * process cannot exit while one is (libuv joins its threads).
   */
  private async acceptInherited(fd: number): Promise<number> {
    const ep = new Epoll(2);
    let wake = -1;
    try {
      wake = eventfd();
      const w = wake;
      this.wakeAccept = () => eventfdWrite(w);
      ep.add(fd, EPOLLIN, 0);
      ep.add(wake, EPOLLIN, 1);
      for (;;) {
        if (this.stopping) return -1;
        const n = await ep.waitAsync(-1);
        if (this.stopping) return -1;
        for (let i = 0; i < n; i++) if (ep.tokens[i] === 0) return accept(fd);
      }
    } finally {
      this.wakeAccept = null;
      ep.close();
      if (wake >= 0) closeQuiet(wake);
    }
  }

  private async serve(fd: number): Promise<void> {
    const pool = this.pool;
    if (pool === null) return;
    const ch = new VhostUserChannel(fd);
    this.channel = ch;
    this.served++;
    const session = new Session(this.backend, pool, this.log, this.refusals);
    this.connLog.info({ connection: this.served }, 'front-end connected');
    this.emit('connected');
    let failure: Error | null = null;
    try {
      for (;;) {
        const raw = await ch.recvAsync();
        if (raw === null) break;
        let msg;
        try {
          msg = decodeRequest(raw.header, raw.payload, raw.fds);
        } catch (e) {
          raw.fds.forEach(closeQuiet);
          throw e;
        }
        this.log.debug({ request: requestName(msg.request), flags: msg.flags, fds: msg.fds.length }, 'request');
        const answer = session.handle(msg);
        if (answer !== null) {
          try {
            ch.send(answer);
          } finally {
            answer.fds.forEach(closeQuiet);
          }
        }
      }
    } catch (e) {
      if (!ch.isClosed) {
        failure = e instanceof Error ? e : new Error(String(e));
        this.connLog.error({ err: failure, connection: this.served }, 'closing the front-end connection');
      }
    } finally {
      session.close(this.resetTimeoutMs());
      ch.close();
      this.channel = null;
    }
    this.connLog.info({ connection: this.served }, 'front-end disconnected');
    this.emit('disconnected', failure);
  }
}

/** Listens on a Unix socket path; what goes wrong is said in words (the usual causes are set-up mistakes). */
function listenOn(path: string, mode: number | undefined): number {
  try {
    return unixListen(path, 16, mode);
  } catch (e) {
    if (!(e instanceof SysError)) throw new VhostUserSocketError(`cannot listen on ${path}: ${(e as Error).message}`, { socket: path });
    const why: Record<string, string> = {
      ENOENT: existsSync(dirname(path)) ? `no socket file can be made in ${dirname(path)}` : `its directory ${dirname(path)} does not exist`,
      ENOTDIR: `a part of ${dirname(path)} is not a directory`,
      EACCES: 'permission denied',
      EROFS: 'read-only file system',
      EADDRINUSE: 'something that is not a socket is in the way',
    };
    throw new VhostUserSocketError(`cannot listen on ${path}: ${why[e.code] ?? e.code}`, { socket: path, errno: e.errno });
  }
}
