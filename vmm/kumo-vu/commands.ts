import type { Command } from 'commander';
import { registerBlk } from './blk/command.js';
import { registerNet } from './net/command.js';
import { registerFs } from './fs/command.js';

/** Each device kind registers its subcommand from its own folder; add one line per kind. */
export const registrations: ((program: Command) => void)[] = [
  registerBlk,
  registerNet,
  registerFs,
];
