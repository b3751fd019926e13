// Bundles the VMM's entry points (kumo, the vCPU worker, the device model) into dist/bundle/ with
// shared chunks, keeping the source layout for entries. One file per isolate instead of ~150 modules
// cuts kumo's start-up several-fold where file access is slow (the nested lab's emulated L1).
import { build } from 'esbuild';

await build({
  entryPoints: ['vmm/cli.ts', 'vmm/vcpu/worker.ts', 'vmm/vm-model.ts'],
  outdir: 'dist/bundle',
  outbase: '.',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  chunkNames: 'chunks/[name]-[hash]',
  // koffi loads its native addon relative to its own package; tsx is only for the TypeScript path.
  external: ['koffi', 'tsx', 'tsx/*'],
  // CommonJS dependencies (pino, commander) call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __kumoCreateRequire } from 'node:module'; const require = __kumoCreateRequire(import.meta.url);" },
  logLevel: 'warning',
});
