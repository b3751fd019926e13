// Shared by the bin/ launchers: run the compiled entry point from dist/ when `npm run build` output
// is newer than every TypeScript source, otherwise run the TypeScript through tsx. Compiled code
// starts several times faster, which matters most inside the nested lab's emulated L1.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const SOURCE_DIRS = ['protocol', 'vmm', 'backends'];

function newestSource(dir, newest = 0) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = newestSource(p, newest);
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

function distIsFresh() {
  if (process.env.KUMO_NO_DIST === '1') return false;
  // Pin the compiled snapshot even while sources change (benchmarks built right before they run).
  if (process.env.KUMO_DIST === '1') return true;
  const stamp = join(root, 'dist', '.build-stamp');
  if (!existsSync(stamp)) return false;
  const built = statSync(stamp).mtimeMs;
  return SOURCE_DIRS.every((d) => !existsSync(join(root, d)) || newestSource(join(root, d)) <= built);
}

export async function launch(entry) {
  // Unhandled, SIGUSR1 makes Node open its inspector on 127.0.0.1:9229, where any local user can run code in this
  // (often root) process. A listener of our own takes the signal instead (kumo-vhost-user-net adds its counters dump).
  process.on('SIGUSR1', () => {});
  const js = entry.replace(/\.ts$/, '.js');
  // An esbuild bundle (dist/bundle/, see scripts/bundle.mjs) starts faster still than tsc's output.
  const compiled = [join(root, 'dist', 'bundle', js), join(root, 'dist', js)].find((p) => existsSync(p));
  if (compiled && distIsFresh()) {
    await import(pathToFileURL(compiled).href);
    return;
  }
  let tsx;
  try {
    tsx = await import('tsx/esm/api');
  } catch (e) {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    const name = basename(process.argv[1] ?? entry).replace(/\.js$/, '');
    process.stderr.write(`${name}: the dependencies are not installed: run \`bash scripts/setup.sh\` (or npm install && npm run build) in ${root}\n`);
    process.exit(1);
  }
  tsx.register();
  await import(pathToFileURL(join(root, entry)).href);
}
