// `kumo` entry point: parse, check the payload (no KVM yet), boot, map the outcome to an exit code.
import { errorLine } from '../protocol/errors.js';
import { setLogLevel } from '../protocol/log.js';
import { parseCli } from './cli-args.js';
import { setModuleRoot } from './module-root.js';
import { prepareBoot, runVm, type PreparedBoot } from './vm.js';
import type { VmConfig } from './config/vm-config.js';
import type { VmRunResult } from './vcpu/supervisor.js';

export interface CliDeps {
  run: (cfg: VmConfig, prepared: PreparedBoot) => Promise<VmRunResult>;
  stderr: (s: string) => void;
}

const defaultDeps: CliDeps = {
  run: (cfg, prepared) => runVm(cfg, { prepared }),
  stderr: (s) => process.stderr.write(s),
};

/** Returns the process exit code: 0 after guest poweroff or reset, 1 on any error. */
export async function main(argv: string[], deps: CliDeps = defaultDeps): Promise<number> {
  let cfg: VmConfig;
  let prepared: PreparedBoot;
  try {
    const parsed = parseCli(argv);
    if (parsed === 'help') return 0;
    if (parsed.logLevel) setLogLevel(parsed.logLevel);
    cfg = parsed.config;
    prepared = prepareBoot(cfg);
  } catch (e) {
    deps.stderr(`kumo: error: ${errorLine(e)}\n`);
    return 1;
  }
  try {
    const res = await deps.run(cfg, prepared);
    const o = res.outcome;
    if (o.kind === 'poweroff' || o.kind === 'reset') {
      deps.stderr(`kumo: guest ${o.kind === 'poweroff' ? 'powered off' : 'requested a reset'} (${o.source})\n`);
      return 0;
    }
    deps.stderr(`kumo: guest stopped: ${o.message}\n${o.regs ? o.regs + '\n' : ''}`);
    return 1;
  } catch (e) {
    deps.stderr(`kumo: error: ${errorLine(e)}\n`);
    return 1;
  }
}

const isEntry = process.argv[1] && /(?:bin\/kumo(?:\.js)?|vmm\/cli\.(?:ts|js))$/.test(process.argv[1]);
if (isEntry) {
  // This file sits at <root>/vmm/cli.* in every layout (sources, dist/, dist/bundle/).
  setModuleRoot(new URL('../', import.meta.url));
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`kumo: fatal: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(1);
    },
  );
}
