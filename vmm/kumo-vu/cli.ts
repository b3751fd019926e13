/**
 * kumo-vu: a userspace vhost-user front-end and virtio driver, to check and measure vhost-user back-ends
 * (ours, qemu-storage-daemon, virtiofsd, DPDK) without a VM.
 */
import { Command } from 'commander';
import { setLogLevel } from '../../protocol/log.js';
import { KUMO_VERSION } from '../../protocol/version.js';
import { registrations } from './commands.js';

const program = new Command('kumo-vu')
  .description('userspace vhost-user front-end: verify and benchmark vhost-user back-ends')
  .option('--log-level <level>', 'pino log level (stderr)', 'warn')
  .version(`kumo-vu ${KUMO_VERSION}`, '-V, --version', 'print the version')
  .hook('preAction', (cmd) => setLogLevel(String(cmd.opts().logLevel)));

for (const register of registrations) register(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  process.stderr.write(`kumo-vu: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 2;
}
