// kumo-vhost-user-net --net-backend "ip=..,mask=..,socket=..,num_queues=..,queue_size=..,tap=..,client=on|off"
// A vhost-user virtio-net backend over a multi-queue TAP (Cloud Hypervisor's vhost_user_net CLI).
// stdout carries machine-readable lines: {"ready":..} once serving, {"counters":..} on SIGUSR1 and at exit.
import { parseArgs } from 'node:util';
import { KumoError, SetupError } from '../../protocol/errors.js';
import { logger } from '../../protocol/log.js';
import { KUMO_VERSION } from '../../protocol/version.js';
import { configureLink, linkMtu, openTap, parseIPv4, parseMac, setTapQueueAttached, type Tap } from '../../protocol/sys/tap.js';
import { VhostUserDaemon } from '../../protocol/vhost-user/daemon.js';
import { stopOnUncaughtError } from '../../protocol/vhost-user/fatal.js';
import { VhostUserSocketError } from '../../protocol/vhost-user/errors.js';
import { NetBackend } from './backend.js';
import { NetBackendConfig } from './config.js';
import { counterView, readCounters, sumCounters } from './counters.js';

const USAGE = `usage: kumo-vhost-user-net --net-backend <params>

  ${NetBackendConfig.SYNTAX}

  defaults: ip=192.168.100.1, mask=255.255.255.0, num_queues=2, queue_size=256, client=off;
  tap names an existing multi-queue TAP to attach to, or the one to create (default: vunet%d).
  Serves one front-end at a time and listens on for the next after it disconnects (client=on connects
  again); Cloud Hypervisor's vhost_user_net exits instead. SIGTERM, SIGINT or SIGHUP stop it.
  SIGUSR1 prints the data-path counters as one JSON line on stdout; KUMO_LOG=error|warn|info|debug sets the log level.
  -h, --help prints this help; -V, --version prints the version.`;

const log = logger('vhost-user-net');
/** How often the back-end checks that its TAP still exists. */
const TAP_CHECK_MS = 1000;

function fatal(msg: string, code = 1): never {
  process.stderr.write(`kumo-vhost-user-net: ${msg}\n`);
  process.exit(code);
}

async function main(): Promise<void> {
  let values: { 'net-backend'?: string[]; help?: boolean; version?: boolean };
  try {
    ({ values } = parseArgs({ options: { 'net-backend': { type: 'string', multiple: true }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean', short: 'V' } } }));
  } catch (e) {
    fatal(`${(e as Error).message}\n${USAGE}`);
  }
  if (values.version) {
    process.stdout.write(`kumo-vhost-user-net ${KUMO_VERSION}\n`);
    return;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const specs = values['net-backend'] ?? [];
  if (specs.length === 0) fatal(`--net-backend is required\n${USAGE}`);
  // One back-end per process, as Cloud Hypervisor's vhost_user_net: a second spec is an error, not a replacement.
  if (specs.length > 1) fatal(`--net-backend given more than once (one back-end per process)\n${USAGE}`);
  let config: NetBackendConfig;
  try {
    config = NetBackendConfig.parse(specs[0]);
  } catch (e) {
    fatal((e as Error).message);
  }

  let tap: Tap;
  try {
    tap = openTap({ name: config.tap ?? 'vunet%d', queues: config.queuePairs });
    configureLink(tap.name, {
      mac: config.hostMac ? parseMac(config.hostMac) : undefined,
      mtu: config.mtu,
      ip: parseIPv4(config.ip),
      mask: parseIPv4(config.mask),
      up: true,
    });
    // Until a front-end runs their RX rings, queues other than 0 must not receive frames.
    for (const fd of tap.fds.slice(1)) setTapQueueAttached(fd, false);
  } catch (e) {
    const ctx = e instanceof KumoError ? ` ${JSON.stringify(e.context)}` : '';
    fatal(`${(e as Error).message}${ctx}`);
  }
  const backend = new NetBackend(tap, {
    queuePairs: config.queuePairs,
    queueSize: config.queueSize,
    mac: config.mac ? parseMac(config.mac) : undefined,
    mtu: config.mtu,
    tapMtu: linkMtu(tap.name),
  }, log);
  const daemon = new VhostUserDaemon(backend, {
    socketPath: config.socket,
    mode: config.client ? 'client' : 'server',
    name: 'vhost-user-net',
  });
  stopOnUncaughtError(daemon, log);

  const counters = () => sumCounters(backend.counters, config.queuePairs);
  const perPair = () => Array.from({ length: config.queuePairs }, (_, p) => readCounters(counterView(backend.counters, p)));
  const dump = () => process.stdout.write(`${JSON.stringify({ counters: counters(), pairs: perPair() })}\n`);
  // stdout read only for the ready line (`| head -1`), closed, or on a full disk: the counters are not printed and the
  // back-end serves on. Unhandled, the error was an uncaught exception.
  let stdoutFailed = false;
  process.stdout.on('error', (e: Error) => {
    if (!stdoutFailed) log.warn({ err: e.message }, 'stdout cannot be written: the counters are not printed');
    stdoutFailed = true;
  });
  process.on('SIGUSR1', dump);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await daemon.stop().catch((e: unknown) => log.error({ err: e }, 'stopping the daemon'));
    dump();
    tap.close();
    process.exit(); // process.exitCode: 1 after a failure
  };
  // A TAP deleted under us (ip link del) fails every front-end to come: exit, so a supervisor makes it anew.
  const watch = setInterval(() => {
    if (stopping || tap.alive()) return;
    log.error({ tap: tap.name }, 'the TAP was deleted; exiting');
    process.exitCode = 1;
    void stop();
  }, TAP_CHECK_MS);
  watch.unref();
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  process.on('SIGHUP', () => void stop());

  await daemon.start().catch((e: unknown) => {
    if (!(e instanceof VhostUserSocketError || e instanceof SetupError)) throw e;
    tap.close();
    fatal(e.message);
  });
  log.info({ tap: tap.name, config: config.toJSON() }, 'vhost-user-net backend ready');
  process.stdout.write(`${JSON.stringify({ ready: true, tap: tap.name, socket: config.socket, pid: process.pid })}\n`);
  try {
    await daemon.run();
  } catch (e) {
    // Client mode: the front-end's socket never answered.
    if (e instanceof VhostUserSocketError) process.stderr.write(`kumo-vhost-user-net: ${e.message}\n`);
    else log.error({ err: e }, 'daemon failed');
    process.exitCode = 1;
  }
  await stop();
}

main().catch((e: unknown) => fatal(e instanceof Error ? e.stack ?? e.message : String(e)));
