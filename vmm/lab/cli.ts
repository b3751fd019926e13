// npm run lab -- CMD [ARGS...]: runs a command inside the nested lab (L1 with a hardware-style
// /dev/kvm), streams its output, exits with its exit code.
import { KumoError } from '../../protocol/errors.js';
import { watchAncestors } from './ancestors.js';
import { shQuote } from './job.js';
import { runInLab } from './lab.js';

const argv = process.argv.slice(2);
if (argv[0] === '--') argv.shift();
if (argv.length === 0 || (argv.length === 1 && (argv[0] === '-h' || argv[0] === '--help'))) {
  // A command really named --help still runs as `npm run lab -- sh -c '--help ...'`.
  (argv.length ? process.stdout : process.stderr).write('usage: npm run lab -- CMD [ARGS...]   (env: KUMO_LAB_TIMEOUT_S, KUMO_LAB_MEM_MIB, KUMO_LAB_CPUS)\n');
  process.exit(argv.length ? 0 : 2);
}
// One argument is taken as a shell command line; several are quoted word by word.
const cmd = argv.length === 1 ? argv[0] : argv.map(shQuote).join(' ');
const num = (v: string | undefined, d: number): number => (v && Number.isFinite(Number(v)) ? Number(v) : d);

// Through `npm run lab` our ancestors are tsx's launcher, sh and npm: if one of them is killed, stop.
watchAncestors(3, () => {
  process.stderr.write('lab: the process that started us is gone; stopping the lab\n');
  process.exit(143); // the 'exit' hook kills qemu/virtiofsd and removes the temp dir
});

try {
  const r = await runInLab(cmd, {
    timeoutMs: num(process.env.KUMO_LAB_TIMEOUT_S, 600) * 1000,
    memMiB: num(process.env.KUMO_LAB_MEM_MIB, 2048),
    cpus: num(process.env.KUMO_LAB_CPUS, 2),
    onOutput: (t) => process.stdout.write(t),
  });
  process.stderr.write(`lab: exit ${r.code} (L1 boot ${r.l1BootS.toFixed(1)} s, wall ${r.wallS.toFixed(1)} s)\n`);
  process.exitCode = r.code;
} catch (e) {
  const ctx = e instanceof KumoError ? `\n${JSON.stringify(e.context, null, 2)}` : '';
  process.stderr.write(`lab failed: ${(e as Error).message}${ctx}\n`);
  process.exitCode = 125;
}
