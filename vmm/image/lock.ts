import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageError } from './errors.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `fn` while holding an exclusive lock file (O_EXCL create, holding our pid). A lock left by a
 * dead process is taken over; a live holder is waited for up to `timeoutMs`.
 */
export async function withLockFile<T>(file: string, timeoutMs: number, fn: () => Promise<T>, what = 'the image build lock'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let said = false;
  for (;;) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let content: string;
      let ageMs: number;
      try {
        content = fs.readFileSync(file, 'utf8').trim();
        ageMs = Date.now() - fs.statSync(file).mtimeMs;
      } catch {
        continue; // released between our create and our read
      }
      const holder = Number.parseInt(content, 10);
      // An empty file is a holder between create and write; only a long-empty one is stale.
      const stale = Number.isFinite(holder) ? !alive(holder) : ageMs > 5000;
      if (stale) {
        try {
          if (fs.readFileSync(file, 'utf8').trim() === content) fs.unlinkSync(file);
        } catch {
          /* someone else removed it first */
        }
        continue;
      }
      if (Date.now() > deadline) throw new ImageError(`timed out waiting for ${what}`, { file, holder });
      if (!said) {
        said = true;
        process.stderr.write(`waiting for ${what}: process ${content} holds ${file} (up to ${Math.round(timeoutMs / 60_000)} min)\n`);
      }
      await sleep(300);
    }
  }
  try {
    return await fn();
  } finally {
    try {
      if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.unlinkSync(file);
    } catch {
      /* already gone */
    }
  }
}
