import { InvalidArgumentError, Option, type Command } from 'commander';
import { parseCount, parsePositive, parseSize } from '../options.js';
import { benchBlk, formatBenchResult, type BenchRw } from './bench.js';
import { formatVerifyReport, verifyBlk } from './verify.js';

interface BlkOpts {
  socket: string;
  connectTimeout: number;
}

/** `kumo-vu blk --socket S verify|bench ...` */
export function registerBlk(program: Command): void {
  const blk = program
    .command('blk')
    .description('drive a vhost-user-blk back-end')
    .requiredOption('--socket <path>', 'vhost-user socket of the back-end')
    .option('--connect-timeout <ms>', 'keep retrying the connect this long', parseCount(0, 600_000), 0);

  blk
    .command('verify')
    .description('negotiate, read config, write/read/compare patterns on every queue, FLUSH, GET_ID')
    .option('--queues <n>', 'queues to test (default: all)', parseCount(1, 256))
    .option('--queue-size <n>', 'virtqueue size (a power of two the back-end allows)', parseCount(1, 32768), 128)
    .option('--json', 'print the report as JSON')
    .action(async (o: { queues?: number; queueSize: number; json?: boolean }) => {
      const b = blk.opts<BlkOpts>();
      if ((o.queueSize & (o.queueSize - 1)) !== 0) throw new InvalidArgumentError(`--queue-size must be a power of two, got ${o.queueSize}`);
      const r = await verifyBlk({ socket: b.socket, queues: o.queues, queueSize: o.queueSize, connectTimeoutMs: b.connectTimeout });
      process.stdout.write((o.json ? JSON.stringify(r, null, 2) : formatVerifyReport(r)) + '\n');
      process.exitCode = r.ok ? 0 : 1;
    });

  blk
    .command('bench')
    .description('fixed-time I/O load: IOPS, MB/s, latency, CPU used by kumo-vu')
    .addOption(new Option('--rw <mode>', 'access pattern').choices(['randread', 'randwrite', 'read', 'write']).default('randread'))
    .option('--bs <size>', 'block size', parseSize, 4096)
    .option('--iodepth <n>', 'requests in flight per queue', parseCount(1, 1024), 32)
    .option('--queues <n>', 'queues', parseCount(1, 256), 1)
    .option('--seconds <s>', 'duration', parsePositive, 10)
    .option('--queue-size <n>', 'virtqueue size', parseCount(1, 32768))
    .option('--buffer-offset <n>', 'data buffers this many bytes past a page boundary (off an O_DIRECT alignment)', parseCount(0, 4095), 0)
    .option('--json', 'print the result as JSON')
    .action(async (o: { rw: BenchRw; bs: number; iodepth: number; queues: number; seconds: number; queueSize?: number; bufferOffset: number; json?: boolean }) => {
      const b = blk.opts<BlkOpts>();
      const r = await benchBlk({ socket: b.socket, connectTimeoutMs: b.connectTimeout, ...o });
      process.stdout.write((o.json ? JSON.stringify(r) : formatBenchResult(r)) + '\n');
      process.exitCode = r.errors === 0 ? 0 : 1;
    });
}
