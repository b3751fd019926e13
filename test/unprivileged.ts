import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
export const NOBODY = 65534;

/** What the tests give nobody in /etc/subuid and /etc/subgid (inside asNobody's mount namespace only). */
export const NOBODY_SUBIDS = `nobody:200000:65536\n${NOBODY}:200000:65536\n`;

/**
 * The command (for spawn) that runs `node <checkout>/<script> ...args` as uid and gid 65534 with no capabilities, as an
 * ordinary user would. A CI clone may sit in a 0700 directory, so the checkout is bind-mounted at base/repo in a private
 * mount namespace, where /etc/subuid and /etc/subgid are also replaced by `subids`. `base` must be a fresh directory
 * of the caller's; it is made 0755.
 */
export function asNobody(base: string, script: string, args: string[], subids = NOBODY_SUBIDS): string[] {
  chmodSync(base, 0o755);
  const repo = join(base, 'repo');
  mkdirSync(repo, { recursive: true });
  const ids = join(base, 'subids');
  writeFileSync(ids, subids, { mode: 0o644 });
  const binds = [`mount --bind "$1" "$2"`, ...['/etc/subuid', '/etc/subgid'].filter(existsSync).map((f) => `mount --bind "$3" ${f}`)];
  return ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c',
    `${binds.join(' && ')} && shift 3 && exec setpriv --reuid=${NOBODY} --regid=${NOBODY} --clear-groups -- "$@"`, 'sh', ROOT, repo, ids,
    process.execPath, join(repo, script), ...args];
}

/** A directory nobody owns (a share), and one anyone may write (for the socket), under `base`. */
export function nobodyDirs(base: string): { work: string; share: string } {
  const work = join(base, 'w');
  const share = join(work, 'share');
  mkdirSync(share, { recursive: true });
  chmodSync(work, 0o777);
  chownSync(share, NOBODY, NOBODY);
  return { work, share };
}
