import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { FuseClient } from '../../../protocol/fuse/index.js';
import { parseCount, parsePositive } from '../options.js';
import { SYNTAX, ScriptRunner } from './script.js';
import { VirtioFsTransport } from './transport.js';
import { benchFs, formatFsBench } from './bench.js';

/** `items` joined with commas into indented lines of at most `width` characters. */
function wrap(items: string[], width: number): string {
  const lines: string[] = [];
  let line = '';
  for (const item of items) {
    const next = line === '' ? `  ${item}` : `${line}, ${item}`;
    if (next.length > width && line !== '') {
      lines.push(`${line},`);
      line = `  ${item}`;
    } else line = next;
  }
  return [...lines, line].join('\n');
}

/** `run --help`: the commands and the rules of the language (the runner's own SYNTAX, from which it takes each command's arity). */
const SCRIPT_HELP = `
Script: one command per line; blank lines and lines starting with # are skipped; words are split on blanks, and a
word in double quotes takes JSON escapes. Paths are relative to the share's root ('.' and '..' are walked here, as a
guest kernel walks them). Commands and their arguments ([...]: may be left out):
${wrap(Object.entries(SYNTAX).map(([c, syntax]) => (syntax === '' ? c : `${c} ${syntax}`)), 110)}
Each line prints "> LINE" and then "ok ..." (attributes as type, mode, size, nlink, uid, gid; data as a JSON string,
bytes that are not UTF-8 as \\xNN; more than 64 bytes as len, a SHA-256 prefix and the first 32) or "err ERRNO" for the
daemon's error reply, and goes on. A line the runner cannot use (unknown command, wrong arguments, a value out of its
field's range) or a failed connection stops the script: "kumo-vu: line N: ..." and exit status 2.`;

interface FsOpts {
  socket: string;
  tag?: string;
  connectTimeout: number;
}

/** `kumo-vu fs --socket S [--tag T] run SCRIPT | bench` */
export function registerFs(program: Command): void {
  const fs = program
    .command('fs')
    .description('drive a virtio-fs (vhost-user-fs) back-end as a FUSE client')
    .requiredOption('--socket <path>', 'vhost-user socket of the back-end')
    .option('--tag <tag>', 'expected tag (checked when the back-end offers CONFIG)')
    .option('--connect-timeout <ms>', 'keep retrying the connect this long', parseCount(0, 600_000), 0);

  fs.command('run')
    .description('run a script (one op per line: ls, stat, cat, write, mkdir, rm, mv, ln, setxattr ...); "-" reads stdin')
    .argument('<script>', 'script file')
    .addHelpText('after', SCRIPT_HELP)
    .action(async (script: string) => {
      const o = fs.opts<FsOpts>();
      // Read first: a daemon serves one front-end, and a missing script must not use it up.
      const text = readFileSync(script === '-' ? 0 : script, 'utf8');
      const t = await VirtioFsTransport.connect(o.socket, o.connectTimeout, 256, 1, o.tag);
      try {
        const c = new FuseClient(t);
        await c.init();
        await new ScriptRunner(c).runScript(text, (s) => process.stdout.write(s + '\n'));
      } finally {
        t.close();
      }
    });

  fs.command('bench')
    .description('lookup+getattr ops/s, 4k random read IOPS, 1 MiB sequential read MB/s, create+write+close files/s')
    .option('--seconds <s>', 'seconds per case', parsePositive, 2)
    .option('--iodepth <n>', 'requests in flight on the request queue (independent request streams)', parseCount(1, 64), 1)
    .option('--json', 'print JSON')
    .action(async (b: { seconds: number; iodepth: number; json?: boolean }) => {
      const o = fs.opts<FsOpts>();
      const t = await VirtioFsTransport.connect(o.socket, o.connectTimeout, 256, b.iodepth, o.tag);
      try {
        const r = await benchFs(new FuseClient(t), t, b.seconds, b.iodepth);
        process.stdout.write((b.json ? JSON.stringify(r) : formatFsBench(r)) + '\n');
      } finally {
        t.close();
      }
    });
}
