// Modules the VMM loads by URL (the vCPU worker entry, the device model) are found from the root
// of whichever layout is running: the sources (tsx), dist/ (tsc) or dist/bundle/ (esbuild). Only an
// entry point knows where it sits in a bundle, so `kumo`'s entry registers the root; without one,
// modules sit where their sources do and are found relative to this file.

let root: URL | null = null;

/** Called by an entry point with the URL of the layout's root (the folder holding vmm/). */
export function setModuleRoot(url: URL): void {
  root = url;
}

/** URL of a module loaded by URL, given its path from the root without extension (e.g. "vmm/vcpu/worker"). */
export function moduleUrl(path: string): URL {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`${path}${ext}`, root ?? new URL('../', import.meta.url));
}
