// kumo's command line → VmConfig (Cloud Hypervisor syntax). Parsing only: no files, no KVM.
import { Command, CommanderError } from 'commander';
import { KUMO_VERSION } from '../protocol/version.js';
import { KumoError } from '../protocol/errors.js';
import { ConsoleConfig } from './config/console.js';
import { CpusConfig } from './config/cpus.js';
import { MemoryConfig } from './config/memory.js';
import { PayloadConfig } from './config/payload.js';
import { RngConfig } from './config/rng.js';
import { VmConfig } from './config/vm-config.js';
import { DiskConfig } from './config/disk.js';
import { NetConfig } from './config/net.js';
import { FsConfig } from './config/fs.js';
import { parseVhostUserDevices } from './config/vhost-user-devices.js';

/** A command line kumo cannot act on (commander's own errors included). */
export class CliError extends KumoError {}

export interface CliOptions {
  config: VmConfig;
  logLevel: string | null;
}

/**
 * A single-value option given twice is an error, as in Cloud Hypervisor: keeping the last one silently turned a wrapper's
 * appended `--memory shared=on` into a guest with the default RAM size.
 */
function once(name: string, keyValues = false): (value: string) => string {
  let seen = false;
  return (value) => {
    const hint = keyValues ? ` (options it takes go in one ${name} argument, comma-separated)` : '';
    if (seen) throw new CliError(`${name} given more than once${hint}`, { option: name });
    seen = true;
    return value;
  };
}

function program(): Command {
  return new Command('kumo')
    .description('kumo: a KVM virtual machine monitor (Cloud Hypervisor compatible command line)')
    .requiredOption('--kernel <path>', 'kernel: PVH ELF vmlinux or bzImage', once('--kernel'))
    .option('--initramfs <path>', 'initramfs image', once('--initramfs'))
    .option('--cmdline <string>', 'kernel command line', once('--cmdline'), '')
    .option('--cpus <options>', `${CpusConfig.SYNTAX.replace(/^--cpus /, '')} (no CPU hot-plug: max= is accepted, only boot vCPUs run)`, once('--cpus', true), 'boot=1')
    .option('--memory <options>', MemoryConfig.SYNTAX.replace(/^--memory /, ''), once('--memory', true), 'size=512M')
    .option('--serial <mode>', `16550 serial at 0x3f8: ${ConsoleConfig.SYNTAX}`, once('--serial', true), 'null')
    .option('--console <mode>', `virtio-console: ${ConsoleConfig.SYNTAX}`, once('--console', true), 'tty')
    .option('--rng <options>', RngConfig.SYNTAX.replace(/^--rng /, ''), once('--rng', true), 'src=/dev/urandom')
    .option('--disk <options...>', DiskConfig.SYNTAX.replace(/^--disk /, ''))
    .option('--net <options...>', NetConfig.SYNTAX.replace(/^--net /, ''))
    .option('--fs <options...>', FsConfig.SYNTAX.replace(/^--fs /, ''))
    .option('-v, --verbose', 'debug logging')
    .version(`kumo ${KUMO_VERSION}`, '-V, --version', 'print the version')
    .allowExcessArguments(false)
    .exitOverride()
    .configureOutput({ writeErr: () => {}, writeOut: (s) => process.stdout.write(s) });
}

/** Parses argv (without node and script) into a validated VmConfig; throws CliError / config errors. */
export function parseCli(argv: string[]): CliOptions | 'help' {
  const p = program();
  try {
    p.parse(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version were printed: nothing more to do.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.help' || e.code === 'commander.version') return 'help';
      throw new CliError(e.message.replace(/^error: /, ''), { code: e.code });
    }
    throw e;
  }
  const o = p.opts<{
    kernel: string;
    initramfs?: string;
    cmdline: string;
    cpus: string;
    memory: string;
    serial: string;
    console: string;
    rng: string;
    disk?: string[];
    net?: string[];
    fs?: string[];
    verbose?: boolean;
  }>();
  const config = new VmConfig(
    new PayloadConfig(o.kernel, o.initramfs ?? null, o.cmdline),
    CpusConfig.parse(o.cpus),
    MemoryConfig.parse(o.memory),
    ConsoleConfig.parse(o.serial, '--serial'),
    ConsoleConfig.parse(o.console, '--console'),
    RngConfig.parse(o.rng),
    parseVhostUserDevices({ disk: o.disk, net: o.net, fs: o.fs }),
  );
  config.validate();
  return { config, logLevel: o.verbose ? 'debug' : null };
}
