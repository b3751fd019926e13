import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { logger } from '../../protocol/log.js';
import { buildCpioGz, type CpioEntry } from './cpio.js';
import { aptDownload, depmod, downloadKernel, extractDeb, readModule, suiteApt } from './debian.js';
import { ImageError } from './errors.js';
import { withLockFile } from './lock.js';
import { L1_MODULES, L2_MODULES, parseBuiltin, parseModulesDep, resolveLoadOrder } from './modules.js';
import { imageCacheDir, SCRIPTS_DIR, type ImagePaths } from './paths.js';
import { extractVmlinux } from './vmlinux.js';

const log = logger('image');
const INIT_DIR = path.join(path.dirname(new URL(import.meta.url).pathname), 'init');
/** Bump when the layout of generated files changes without any input changing. */
const BUILDER_VERSION = '1';

function writeAtomic(file: string, data: Buffer | string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

interface KernelTree { release: string; root: string; modulesDir: string; bzImage: string }

/**
 * Which Debian cloud kernel the images carry: bookworm's own (6.1, the default), or bookworm-backports' newer one
 * (6.12 today), for guest-side features 6.1 lacks (FUSE_DIRECT_IO_ALLOW_MMAP, FUSE_CREATE_SUPP_GROUP).
 */
export type KernelChoice = 'stable' | 'backports';

function prepareKernel(cache: string, choice: KernelChoice): KernelTree {
  const debs = path.join(cache, 'debs');
  const apt = choice === 'backports' ? suiteApt(path.join(cache, 'apt'), 'bookworm-backports') : [];
  const { deb, pkg } = downloadKernel(debs, 'linux-image-cloud-amd64', apt);
  const root = path.join(cache, 'kernel', pkg);
  extractDeb(deb, root);
  const releases = fs.readdirSync(path.join(root, 'lib', 'modules'));
  if (releases.length !== 1) throw new ImageError('expected one module tree in the kernel package', { releases });
  const release = releases[0];
  const modulesDir = path.join(root, 'lib', 'modules', release);
  if (!fs.existsSync(path.join(modulesDir, 'modules.dep'))) depmod(root, release);
  const bzImage = path.join(root, 'boot', `vmlinuz-${release}`);
  if (!fs.existsSync(bzImage)) throw new ImageError('kernel package has no bzImage', { bzImage });
  return { release, root, modulesDir, bzImage };
}

function ensureVmlinux(k: KernelTree): string {
  const out = path.join(path.dirname(k.bzImage), `vmlinux-${k.release}`);
  if (fs.existsSync(out)) return out;
  const { elf, pvhEntry } = extractVmlinux(fs.readFileSync(k.bzImage));
  writeAtomic(out, elf);
  log.info({ out, pvhEntry: '0x' + pvhEntry.toString(16), size: elf.length }, 'vmlinux extracted');
  return out;
}

/** Load order (paths relative to the module tree) for a module set; exported for tests. */
export function loadOrder(modulesDir: string, wanted: readonly string[]): string[] {
  const deps = parseModulesDep(fs.readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8'));
  const builtinFile = path.join(modulesDir, 'modules.builtin');
  const builtin = fs.existsSync(builtinFile) ? parseBuiltin(fs.readFileSync(builtinFile, 'utf8')) : new Set<string>();
  return resolveLoadOrder(deps, wanted, builtin);
}

function listScripts(): { name: string; text: string }[] {
  if (!fs.existsSync(SCRIPTS_DIR)) return [];
  return fs.readdirSync(SCRIPTS_DIR).filter((f) => /^[A-Za-z0-9_.-]+\.sh$/.test(f)).sort()
    .map((f) => ({ name: f.slice(0, -3), text: fs.readFileSync(path.join(SCRIPTS_DIR, f), 'utf8') }));
}

function baseEntries(busybox: Buffer, init: string, modules: { file: string; data: Buffer }[]): CpioEntry[] {
  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc', 'etc/kumo', 'lib', 'lib/modules']) {
    entries.push({ kind: 'dir', path: d });
  }
  entries.push({ kind: 'chardev', path: 'dev/console', major: 5, minor: 1 });
  entries.push({ kind: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 });
  entries.push({ kind: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 });
  entries.push({ kind: 'symlink', path: 'bin/sh', target: 'busybox' });
  entries.push({ kind: 'file', path: 'init', data: init, mode: 0o755 });
  for (const m of modules) entries.push({ kind: 'file', path: `lib/modules/${m.file}`, data: m.data });
  entries.push({ kind: 'file', path: 'etc/kumo/modules', data: modules.map((m) => m.file).join('\n') + '\n' });
  return entries;
}

function moduleFiles(modulesDir: string, order: string[]): { file: string; data: Buffer }[] {
  return order.map((rel) => ({
    file: path.basename(rel).replace(/\.ko\.(xz|zst|gz)$/, '.ko'),
    data: readModule(path.join(modulesDir, rel)),
  }));
}

function hashOf(...parts: (string | Buffer)[]): string {
  const h = crypto.createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex').slice(0, 12);
}

/** Where a kernel choice's images live: the image cache itself for stable, a folder of its own for backports. */
function cacheFor(choice: KernelChoice): string {
  return choice === 'stable' ? imageCacheDir() : path.join(imageCacheDir(), choice);
}

async function build(choice: KernelChoice): Promise<ImagePaths> {
  const cache = cacheFor(choice);
  fs.mkdirSync(cache, { recursive: true });
  return withLockFile(path.join(cache, '.lock'), 15 * 60_000, async () => {
    const k = prepareKernel(cache, choice);
    const vmlinux = ensureVmlinux(k);
    const bbDeb = aptDownload(path.join(cache, 'debs'), 'busybox-static');
    const bbRoot = path.join(cache, 'busybox');
    extractDeb(bbDeb, bbRoot);
    const busybox = fs.readFileSync(path.join(bbRoot, 'bin', 'busybox'));

    const l2Init = fs.readFileSync(path.join(INIT_DIR, 'l2-init.sh'), 'utf8');
    const say = fs.readFileSync(path.join(INIT_DIR, 'say.sh'), 'utf8');
    const l1Init = fs.readFileSync(path.join(INIT_DIR, 'l1-init.sh'), 'utf8');
    const scripts = listScripts();
    const l2Order = loadOrder(k.modulesDir, L2_MODULES);
    const l1Order = loadOrder(k.modulesDir, L1_MODULES);
    const key = hashOf(BUILDER_VERSION, k.release, path.basename(bbDeb), l2Init, say, l1Init,
      JSON.stringify(scripts), l2Order.join(','), l1Order.join(','));

    const initramfs = path.join(cache, `initramfs-${key}.cpio.gz`);
    const labInitramfs = path.join(cache, `lab-initramfs-${key}.cpio.gz`);
    if (!fs.existsSync(initramfs)) {
      const entries = baseEntries(busybox, l2Init, moduleFiles(k.modulesDir, l2Order));
      entries.push({ kind: 'file', path: 'etc/kumo/say.sh', data: say });
      entries.push({ kind: 'dir', path: 'etc/kumo/scripts' });
      for (const s of scripts) entries.push({ kind: 'file', path: `etc/kumo/scripts/${s.name}.sh`, data: s.text, mode: 0o755 });
      writeAtomic(initramfs, buildCpioGz(entries));
      log.info({ initramfs, modules: l2Order.length, scripts: scripts.map((s) => s.name) }, 'L2 initramfs built');
    }
    if (!fs.existsSync(labInitramfs)) {
      writeAtomic(labInitramfs, buildCpioGz(baseEntries(busybox, l1Init, moduleFiles(k.modulesDir, l1Order))));
      log.info({ labInitramfs, modules: l1Order.length }, 'L1 lab initramfs built');
    }
    for (const f of fs.readdirSync(cache)) {
      // Images of earlier script sets: superseded, and this build holds the lock.
      if (/^(lab-)?initramfs-[0-9a-f]{12}\.cpio\.gz$/.test(f) && !f.includes(key)) fs.rmSync(path.join(cache, f), { force: true });
    }
    const paths: ImagePaths = {
      kernelRelease: k.release, vmlinux, bzImage: k.bzImage, initramfs, labInitramfs,
      modulesDir: k.modulesDir, scripts: scripts.map((s) => s.name),
    };
    writeAtomic(path.join(cache, 'image.json'), JSON.stringify(paths, null, 2) + '\n');
    return paths;
  });
}

const pending = new Map<KernelChoice, Promise<ImagePaths>>();

/**
 * Builds (or finds in build/image/) the guest kernel and initramfs images. Cached and idempotent;
 * concurrent callers in one process share one build, across processes a lock file serialises them.
 */
export function ensureImage(choice: KernelChoice = 'stable'): Promise<ImagePaths> {
  let p = pending.get(choice);
  if (p === undefined) {
    p = build(choice).catch((e: unknown) => {
      pending.delete(choice);
      throw e;
    });
    pending.set(choice, p);
  }
  return p;
}
