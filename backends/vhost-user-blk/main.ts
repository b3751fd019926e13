import { logger } from '../../protocol/log.js';
import { KumoError, SetupError } from '../../protocol/errors.js';
import { KUMO_VERSION } from '../../protocol/version.js';
import { VhostUserDaemon } from '../../protocol/vhost-user/daemon.js';
import { stopOnUncaughtError } from '../../protocol/vhost-user/fatal.js';
import { VhostUserSocketError } from '../../protocol/vhost-user/errors.js';
import { BlockBackendConfig } from './config.js';
import { DiskImage } from './image.js';
import { BlkBackend } from './backend.js';

const USAGE = `Usage: kumo-vhost-user-blk --block-backend <options>

Launch a vhost-user-blk backend (Cloud Hypervisor compatible).

Options:
  --block-backend <options>  ${BlockBackendConfig.SYNTAX}
  -h, --help                 print this help
  -V, --version              print the version

Defaults: num_queues=1, queue_size=1024, readonly=false, direct=false, poll_queue=true, locking=true.
The image is locked (OFD) so that no two processes write it. locking=false serves it unlocked, as
qemu-storage-daemon's locking=off: for the destination of a live migration on the same host or on shared
storage, which starts while the source's back-end still holds the image.
Serves one front-end at a time and listens on for the next after it disconnects, as qemu-storage-daemon
(Cloud Hypervisor's vhost_user_block exits instead); SIGTERM, SIGINT or SIGHUP stop it.
Environment: KUMO_LOG=fatal|error|warn|info|debug|trace|silent (log level, info), KUMO_BLK_COMPLETION=eventfd|wait
  (completion strategy), KUMO_BLK_POLL_US (poll window, 50),
  KUMO_BLK_POLL_YIELD=0 (spin without sched_yield).
`;

class UsageError extends KumoError {}

function parseArgs(argv: string[]): BlockBackendConfig | null {
  let spec: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') return null;
    if (a === '-V' || a === '--version') {
      process.stdout.write(`kumo-vhost-user-blk ${KUMO_VERSION}\n`);
      process.exit(0);
    }
    if (a === '--block-backend' || a.startsWith('--block-backend=')) {
      // As Cloud Hypervisor's vhost_user_block: one back-end per process, so a second one is an error, not a replacement.
      if (spec !== undefined) throw new UsageError('--block-backend given more than once (one back-end per process)');
      if (a === '--block-backend') {
        if (i + 1 >= argv.length) throw new UsageError('--block-backend needs a value');
        spec = argv[++i];
      } else spec = a.slice('--block-backend='.length);
    } else {
      throw new UsageError(`unknown argument ${JSON.stringify(a)}`);
    }
  }
  if (spec === undefined) throw new UsageError('missing --block-backend');
  return BlockBackendConfig.parse(spec);
}

async function main(): Promise<number> {
  const log = logger('vhost-user-blk');
  let cfg: BlockBackendConfig | null;
  try {
    cfg = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`kumo-vhost-user-blk: ${e instanceof Error ? e.message : String(e)}\n\n${USAGE}`);
    return 2;
  }
  if (cfg === null) {
    process.stdout.write(USAGE);
    return 0;
  }
  const completion = process.env.KUMO_BLK_COMPLETION ?? 'eventfd';
  if (completion !== 'eventfd' && completion !== 'wait') {
    process.stderr.write(`kumo-vhost-user-blk: KUMO_BLK_COMPLETION must be eventfd or wait, not ${JSON.stringify(completion)}\n`);
    return 2;
  }
  let image: DiskImage;
  try {
    image = DiskImage.open(cfg.path, { readonly: cfg.readonly, direct: cfg.direct, lock: cfg.locking });
  } catch (e) {
    process.stderr.write(`kumo-vhost-user-blk: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
  const pollUs = Number(process.env.KUMO_BLK_POLL_US ?? 50);
  const backend = new BlkBackend(image, {
    numQueues: cfg.numQueues,
    queueSize: cfg.queueSize,
    pollQueue: cfg.pollQueue,
    pollUs: Number.isFinite(pollUs) && pollUs >= 0 ? pollUs : 50,
    completion,
    log,
  });
  const daemon = new VhostUserDaemon(backend, { socketPath: cfg.socket, name: 'vhost-user-blk' });
  stopOnUncaughtError(daemon, log);
  const stop = () => {
    void daemon.stop();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  process.once('SIGHUP', stop); // as qemu-storage-daemon: the terminal or session that started it went away
  try {
    await daemon.start();
    log.info({ config: cfg.toJSON(), sectors: image.sectors, completion }, 'vhost-user-blk backend ready');
    await daemon.run();
  } catch (e) {
    if (e instanceof VhostUserSocketError || e instanceof SetupError) process.stderr.write(`kumo-vhost-user-blk: ${e.message}\n`);
    else log.error({ err: e }, 'backend failed');
    return 1;
  } finally {
    // image.fd (the one description holding the image lock) is left to the kernel at exit: the queues write through
    // descriptions of their own, and a bounded stop may leave a worker with writes in flight. Closed here, the lock
    // went while they still landed, over what a restarted back-end had written and acked meanwhile.
    await daemon.stop();
  }
  return 0;
}

// Exit explicitly: a queue worker left behind by a bounded stop must not keep the process waiting on its event loop.
// The process (and with it the image lock) still ends only once that worker's writes in flight have: the kernel waits.
process.exit(await main());
