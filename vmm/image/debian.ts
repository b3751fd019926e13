import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ImageError } from './errors.js';

function run(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw new ImageError(`cannot run ${cmd}`, { args, error: r.error.message });
  if (r.status !== 0) throw new ImageError(`${cmd} failed`, { args, status: r.status, stderr: r.stderr.slice(-2000) });
  return r.stdout;
}

/** Deb files in `dir` whose package name is exactly `pkg`. */
function findDeb(dir: string, pkg: string): string | null {
  const hit = fs.readdirSync(dir).filter((f) => f.startsWith(pkg + '_') && f.endsWith('.deb')).sort();
  return hit.length ? path.join(dir, hit[hit.length - 1]) : null;
}

/**
 * `apt-get download pkg` into `dir` unless a deb of it is already there (`apt`: options naming other sources, see
 * suiteApt). Returns the .deb path.
 */
export function aptDownload(dir: string, pkg: string, apt: readonly string[] = []): string {
  fs.mkdirSync(dir, { recursive: true });
  const have = findDeb(dir, pkg);
  if (have) return have;
  run('apt-get', [...apt, 'download', '-q', pkg], dir);
  const got = findDeb(dir, pkg);
  if (!got) throw new ImageError('apt-get download produced no deb', { pkg, dir });
  return got;
}

export function debField(deb: string, field: string): string {
  return run('dpkg-deb', ['-f', deb, field]).trim();
}

/**
 * The real kernel package behind a Debian meta package (linux-image-cloud-amd64 depends on
 * linux-image-<release>), downloaded into `dir`.
 */
export function downloadKernel(dir: string, meta = 'linux-image-cloud-amd64', apt: readonly string[] = []): { deb: string; pkg: string } {
  const metaDeb = aptDownload(dir, meta, apt);
  const dep = debField(metaDeb, 'Depends').split(',').map((d) => d.trim().split(/\s/)[0]).find((d) => d.startsWith('linux-image-'));
  if (!dep) throw new ImageError('kernel meta package names no linux-image dependency', { metaDeb });
  return { deb: aptDownload(dir, dep, apt), pkg: dep };
}

/** How long a suite's package index fetched by suiteApt is used before it is fetched again. */
const INDEX_MAX_AGE_MS = 24 * 3600_000;

/**
 * apt-get options that see one Debian suite only (e.g. bookworm-backports), through a sources list and package
 * index of their own under `dir`: the system's apt configuration stays untouched. Fetches the index when it is
 * missing or older than a day.
 */
export function suiteApt(dir: string, suite: string): string[] {
  const lists = path.join(dir, 'lists');
  fs.mkdirSync(path.join(lists, 'partial'), { recursive: true });
  const sources = path.join(dir, 'sources.list');
  fs.writeFileSync(sources, `deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian ${suite} main\n`);
  const apt = ['-o', `Dir::Etc::SourceList=${sources}`, '-o', 'Dir::Etc::SourceParts=/nonexistent', '-o', `Dir::State::Lists=${lists}`,
    '-o', 'Dir::Cache::pkgcache=', '-o', 'Dir::Cache::srcpkgcache=', '-o', 'Debug::NoLocking=1'];
  const fetched = fs.readdirSync(lists).filter((f) => f.endsWith('_Packages') || f.endsWith('_Packages.lz4'))
    .map((f) => fs.statSync(path.join(lists, f)).mtimeMs);
  if (fetched.length === 0 || Date.now() - Math.min(...fetched) > INDEX_MAX_AGE_MS) {
    // Backports keeps only its newest kernel on the mirror: an old index may name a deb that is gone.
    run('apt-get', [...apt, 'update', '-q']);
  }
  return apt;
}

/** dpkg-deb -x into `dest` (once; a marker file records completion). */
export function extractDeb(deb: string, dest: string): void {
  const marker = path.join(dest, '.kumo-extracted');
  if (fs.existsSync(marker) && fs.readFileSync(marker, 'utf8') === path.basename(deb)) return;
  fs.rmSync(dest, { recursive: true, force: true });
  fs.mkdirSync(dest, { recursive: true });
  run('dpkg-deb', ['-x', deb, dest]);
  fs.writeFileSync(marker, path.basename(deb));
}

/** depmod -b ROOT RELEASE: writes modules.dep for an extracted module tree. */
export function depmod(root: string, release: string): void {
  run('depmod', ['-b', root, release]);
}

/** A module file's bytes, decompressing .ko.xz / .ko.zst / .ko.gz (busybox insmod wants plain ELF). */
export function readModule(file: string): Buffer {
  if (file.endsWith('.ko')) return fs.readFileSync(file);
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : file.endsWith('.gz') ? 'gzip' : null;
  if (!tool) throw new ImageError('unknown module compression', { file });
  const r = spawnSync(tool, ['-dc', file], { maxBuffer: 256 << 20 });
  if (r.error || r.status !== 0) throw new ImageError(`cannot decompress module with ${tool}`, { file, status: r.status });
  return r.stdout;
}
