export { ensureImage, loadOrder, type KernelChoice } from './build.js';
export { ImageError } from './errors.js';
export { L1_MODULES, L2_MODULES, moduleName, parseModulesDep, resolveLoadOrder } from './modules.js';
export { imageCacheDir, type ImagePaths } from './paths.js';
export { elfNotes, extractVmlinux, pvhEntry, XEN_ELFNOTE_PHYS32_ENTRY } from './vmlinux.js';
