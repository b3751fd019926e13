import { FuseClient, FuseReplyError, FUSE_ROOT_ID, Fattr, Op, nameBytes, type Attr } from '../../../protocol/fuse/index.js';
import { KumoError } from '../../../protocol/errors.js';

/**
 * Runs a filesystem script against a FUSE server: one operation per line, paths relative to the
 * share root, replies printed in a stable form (no inode numbers, handles or unstable times) so
 * two servers can be compared line by line.
 */
export class ScriptError extends KumoError {}

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const dec = new TextDecoder();

const TYPES: Record<number, string> = { 0o01: 'p', 0o02: 'c', 0o04: 'd', 0o06: 'b', 0o10: 'f', 0o12: 'l', 0o14: 's' };
const typeChar = (mode: number): string => TYPES[(mode >> 12) & 0o17] ?? '?';
const oct = (n: number): string => n.toString(8).padStart(4, '0');
const show = (b: Uint8Array): string =>
  b.length <= 64 ? JSON.stringify(dec.decode(b)) : `len=${b.length} ${JSON.stringify(dec.decode(b.subarray(0, 32)))}...`;

function attrLine(a: Attr): string {
  return `type=${typeChar(a.mode)} mode=${oct(a.mode & 0o7777)} nlink=${a.nlink} size=${a.size} uid=${a.uid} gid=${a.gid}`;
}

/** Splits a line into words; "double quoted" words may hold spaces and JSON escapes. */
export function words(line: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line))) out.push(m[1] !== undefined ? (JSON.parse(`"${m[1]}"`) as string) : m[2]);
  return out;
}

export class ScriptRunner {
  /** Lookups made while running the current line; forgotten (BATCH_FORGET) when it ends. */
  private looked: number[] = [];
  constructor(private readonly c: FuseClient) {}

  async runScript(text: string, print: (s: string) => void): Promise<void> {
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      print(`> ${line}`);
      print(await this.runLine(line));
    }
  }

  async runLine(line: string): Promise<string> {
    try {
      return await this.exec(words(line));
    } catch (e) {
      if (e instanceof FuseReplyError) return `err ${e.code}`;
      throw e;
    } finally {
      await this.forgetAll();
    }
  }

  private async forgetAll(): Promise<void> {
    if (this.looked.length === 0) return;
    const counts = new Map<number, number>();
    for (const n of this.looked) counts.set(n, (counts.get(n) ?? 0) + 1);
    this.looked = [];
    const items = [...counts].map(([nodeid, nlookup]) => ({ nodeid, nlookup }));
    if (items.length === 1) await this.c.forget(items[0].nodeid, items[0].nlookup);
    else await this.c.batchForget(items);
  }

  private track(nodeid: number): number {
    if (nodeid !== FUSE_ROOT_ID && nodeid !== 0) this.looked.push(nodeid);
    return nodeid;
  }

  /** Resolves a path to a nodeid, one LOOKUP per component. */
  async resolve(path: string): Promise<number> {
    let node = FUSE_ROOT_ID;
    for (const part of path.split('/').filter((p) => p !== '' && p !== '.')) {
      node = this.track((await this.c.lookup(node, part)).nodeid);
    }
    return node;
  }

  /** Looks a name up first, as the kernel does before UNLINK/RENAME (some servers require a known inode). */
  private async known(parent: number, name: string): Promise<void> {
    try {
      this.track((await this.c.lookup(parent, name)).nodeid);
    } catch (e) {
      if (!(e instanceof FuseReplyError)) throw e;
    }
  }

  private async parent(path: string): Promise<[number, string]> {
    const i = path.lastIndexOf('/');
    const name = path.slice(i + 1);
    return [await this.resolve(i < 0 ? '' : path.slice(0, i)), name];
  }

  private async withFile<T>(path: string, flags: number, f: (node: number, fh: number) => Promise<T>): Promise<T> {
    const node = await this.resolve(path);
    const { fh } = await this.c.open(node, flags);
    try {
      return await f(node, fh);
    } finally {
      await this.c.release(node, fh);
    }
  }

  private async exec(w: string[]): Promise<string> {
    const c = this.c;
    const [cmd, a1 = '', a2 = '', a3 = '', a4 = ''] = w;
    const need = (n: number): void => {
      if (w.length < n + 1) throw new ScriptError(`${cmd} needs ${n} argument(s)`, { line: w.join(' ') });
    };
    switch (cmd) {
      case 'lookup':
      case 'stat': {
        need(1);
        const n = await this.resolve(a1);
        return `ok ${attrLine(await c.getattr(n))}`;
      }
      case 'mtime': {
        const a = await c.getattr(await this.resolve(a1));
        return `ok mtime=${a.mtime} atime=${a.atime}`;
      }
      case 'ls':
      case 'lsraw': {
        const n = await this.resolve(a1);
        const { fh } = await c.opendir(n);
        const names: string[] = [];
        try {
          let off = 0n;
          for (;;) {
            if (cmd === 'ls') {
              const es = await c.readdirplus(n, fh, off);
              if (es.length === 0) break;
              for (const e of es) {
                this.track(e.entry.nodeid);
                names.push(`${dec.decode(e.dirent.name)}:${typeChar(e.dirent.type << 12)}`);
                off = e.dirent.off;
              }
            } else {
              const es = await c.readdir(n, fh, off);
              if (es.length === 0) break;
              for (const e of es) {
                names.push(`${dec.decode(e.name)}:${typeChar(e.type << 12)}`);
                off = e.off;
              }
            }
          }
        } finally {
          await c.release(n, fh, true);
        }
        return `ok ${names.sort().join(' ')}`;
      }
      case 'cat':
        need(1);
        return this.withFile(a1, O_RDONLY, async (n, fh) => {
          const parts: Uint8Array[] = [];
          for (let off = 0; ; ) {
            const b = await c.read(n, fh, off, 65536);
            if (b.length === 0) break;
            parts.push(b);
            off += b.length;
          }
          return `ok ${show(Buffer.concat(parts))}`;
        });
      case 'pread':
        return this.withFile(a1, O_RDONLY, async (n, fh) => `ok ${show(await c.read(n, fh, Number(a2), Number(a3)))}`);
      case 'write':
      case 'pwrite': {
        need(2);
        const data = nameBytes(cmd === 'write' ? a2 : a3);
        const off = cmd === 'write' ? 0 : Number(a2);
        const [p, name] = await this.parent(a1);
        let node: number;
        let fh: number;
        try {
          node = this.track((await c.lookup(p, name)).nodeid);
          fh = (await c.open(node, cmd === 'write' ? O_WRONLY | O_TRUNC : O_WRONLY)).fh;
        } catch (e) {
          if (!(e instanceof FuseReplyError) || e.code !== 'ENOENT') throw e;
          const r = await c.create(p, name, O_WRONLY | O_CREAT | O_TRUNC, 0o100644);
          node = this.track(r.entry.nodeid);
          fh = r.fh;
        }
        try {
          const n = await c.write(node, fh, off, data);
          await c.flush(node, fh);
          return `ok wrote=${n}`;
        } finally {
          await c.release(node, fh);
        }
      }
      case 'create': {
        const [p, name] = await this.parent(a1);
        const r = await c.create(p, name, O_RDWR | O_CREAT | 0o200 /* O_EXCL */, 0o100000 | parseInt(a2 || '644', 8));
        this.track(r.entry.nodeid);
        await c.release(r.entry.nodeid, r.fh);
        return `ok ${attrLine(r.entry.attr)}`;
      }
      case 'mkdir': {
        const [p, name] = await this.parent(a1);
        const e = await c.mkdir(p, name, parseInt(a2 || '755', 8));
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'mknod': {
        const [p, name] = await this.parent(a1);
        const e = await c.mknod(p, name, 0o010000 | parseInt(a2 || '644', 8));
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'symlink': {
        need(2);
        const [p, name] = await this.parent(a2);
        const e = await c.symlink(p, name, a1);
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'readlink':
        return `ok ${show(await c.readlink(await this.resolve(a1)))}`;
      case 'ln': {
        need(2);
        const n = await this.resolve(a1);
        const [p, name] = await this.parent(a2);
        const e = await c.link(n, p, name);
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'rm':
      case 'rmdir': {
        const [p, name] = await this.parent(a1);
        await this.known(p, name);
        if (cmd === 'rm') await c.unlink(p, name);
        else await c.rmdir(p, name);
        return 'ok';
      }
      case 'mv':
      case 'mvx':
      case 'mvn': {
        need(2);
        const [p1, n1] = await this.parent(a1);
        const [p2, n2] = await this.parent(a2);
        await this.known(p1, n1);
        await this.known(p2, n2);
        await c.rename(p1, n1, p2, n2, cmd === 'mv' ? undefined : cmd === 'mvx' ? 2 : 1);
        return 'ok';
      }
      case 'chmod':
        return `ok ${attrLine(await c.setattr(await this.resolve(a2), { valid: Fattr.MODE, mode: parseInt(a1, 8) }))}`;
      case 'chown':
        return `ok ${attrLine(await c.setattr(await this.resolve(a3), { valid: Fattr.UID | Fattr.GID, uid: Number(a1), gid: Number(a2) }))}`;
      case 'truncate':
        return `ok ${attrLine(await c.setattr(await this.resolve(a1), { valid: Fattr.SIZE, size: Number(a2) }))}`;
      case 'ftruncate':
        return this.withFile(a1, O_RDWR, async (n, fh) => `ok ${attrLine(await c.setattr(n, { valid: Fattr.SIZE | Fattr.FH, fh, size: Number(a2) }))}`);
      case 'utime': {
        const t = Number(a2);
        await c.setattr(await this.resolve(a1), { valid: Fattr.ATIME | Fattr.MTIME, atime: t, mtime: t });
        const a = await c.getattr(await this.resolve(a1));
        return `ok mtime=${a.mtime} atime=${a.atime}`;
      }
      case 'setxattr':
        await c.setxattr(await this.resolve(a1), a2, nameBytes(a3), Number(a4 || 0));
        return 'ok';
      case 'getxattr': {
        const n = await this.resolve(a1);
        const len = (await c.getxattr(n, a2, 0)) as number;
        return `ok len=${len} ${show((await c.getxattr(n, a2, Math.max(len, 1))) as Uint8Array)}`;
      }
      case 'listxattr': {
        const n = await this.resolve(a1);
        const len = (await c.listxattr(n, 0)) as number;
        if (len === 0) return 'ok';
        const b = (await c.listxattr(n, len)) as Uint8Array;
        return `ok ${dec.decode(b).split('\0').filter(Boolean).sort().join(' ')}`;
      }
      case 'rmxattr':
        await c.removexattr(await this.resolve(a1), a2);
        return 'ok';
      case 'statfs': {
        const s = await c.statfs(await this.resolve(a1));
        return `ok namelen=${s.namelen} bsize=${s.bsize}`;
      }
      case 'fsync':
        return this.withFile(a1, O_RDWR, async (n, fh) => (await c.fsync(n, fh, a2 === 'data'), 'ok'));
      case 'fsyncdir': {
        const n = await this.resolve(a1);
        const { fh } = await c.opendir(n);
        try {
          await c.fsync(n, fh, false, true);
        } finally {
          await c.release(n, fh, true);
        }
        return 'ok';
      }
      case 'fallocate':
        return this.withFile(a1, O_RDWR, async (n, fh) => {
          await c.fallocate(n, fh, Number(a2), Number(a3), Number(a4 || 0));
          return `ok ${attrLine(await c.getattr(n))}`;
        });
      case 'seek':
        need(3);
        if (!/^-?\d+$/.test(a3)) throw new ScriptError('seek offset must be an integer', { line: w.join(' ') });
        return this.withFile(a1, O_RDONLY, async (n, fh) => `ok ${await c.lseek(n, fh, BigInt(a3), a2 === 'data' ? 3 : a2 === 'hole' ? 4 : Number(a2))}`);
      case 'copy': {
        need(2);
        return this.withFile(a1, O_RDONLY, (ni, fhi) =>
          this.withFile(a2, O_RDWR, async (no, fho) => `ok copied=${await c.copyFileRange(ni, fhi, Number(a3 || 0), no, fho, Number(a4 || 0), 1 << 20)}`),
        );
      }
      case 'lock':
      case 'lockw':
        return this.withFile(a1, O_RDWR, async (n, fh) => {
          const type = a2 === 'rd' ? 0 : a2 === 'wr' ? 1 : 2;
          await c.setlk(n, fh, 1n, { start: BigInt(a3 || 0), end: BigInt(a4 || '9223372036854775807'), type, pid: 1 }, cmd === 'lockw');
          // A second owner sees the first owner's lock.
          const g = await c.getlk(n, fh, 2n, { start: 0n, end: 0x7fffffffffffffffn, type: 1, pid: 2 });
          return `ok conflict=${g.type === 2 ? 'none' : `${g.type === 0 ? 'rd' : 'wr'}:${g.start}-${g.end}`}`;
        });
      case 'access':
        await c.access(await this.resolve(a1), Number(a2));
        return 'ok';
      case 'flush':
        return this.withFile(a1, O_RDONLY, async (n, fh) => (await c.flush(n, fh, 7n), 'ok'));
      case 'syncfs':
        await c.syncfs();
        return 'ok';
      case 'interrupt':
        await c.interrupt(12345n);
        return 'ok';
      case 'rawop': {
        await c.call(Number(a1), FUSE_ROOT_ID, [new Uint8Array(Number(a2 || 0))], 64, `OP_${a1}`);
        return 'ok';
      }
      case 'destroy':
        await c.destroy();
        return 'ok';
      case 'init': {
        const r = await c.init();
        return `ok ${r.major}.${r.minor >= 27 ? 'ok' : r.minor}`;
      }
      default:
        throw new ScriptError(`unknown command ${cmd}`, { cmd });
    }
  }
}

export { Op };
