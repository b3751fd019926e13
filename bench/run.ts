// `npm run bench [-- name ...]`: runs each benchmark module and prints its tables side by side with the peer.
import { existsSync } from 'node:fs';
import { formatTable } from './format.js';
import type { BenchModule } from './types.js';

const ALL = ['virtqueue', 'kumo-vu', 'blk', 'net', 'fs', 'vmm-platform', 'vmm', 'boot'];

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const names = wanted.length ? wanted : ALL;
  let failed = 0;
  for (const name of names) {
    const file = new URL(`./${name}.ts`, import.meta.url);
    if (!existsSync(file)) {
      console.log(`\n## ${name}: no benchmark module (bench/${name}.ts)`);
      continue;
    }
    console.log(`\n## ${name}`);
    try {
      const mod = (await import(file.href)) as BenchModule;
      for (const t of await mod.run()) console.log(`\n${formatTable(t)}`);
    } catch (e) {
      failed++;
      console.log(`benchmark ${name} failed: ${(e as Error).stack ?? e}`);
    }
  }
  process.exitCode = failed ? 1 : 0;
}

await main();
