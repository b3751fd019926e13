import { FuseClient, FuseReplyError, FUSE_ROOT_ID, Fattr, Op, nameBytes, type Attr } from '../../../protocol/fuse/index.js';
import { createHash } from 'node:crypto';
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
const strict = new TextDecoder('utf-8', { fatal: true });
/**
 * Bytes as text, faithfully: valid UTF-8 as it is; otherwise each byte above 0x7f as \xNN (a backslash itself as
 * \\), so that two different byte strings never print the same (a kumo-vs-peer compare depends on it).
 */
function text(b: Uint8Array): string {
  try {
    const s = strict.decode(b);
    if (!s.includes('\\x')) return s;
  } catch {
    // not UTF-8: escaped below
  }
  let out = '';
  for (const x of b) out += x === 0x5c ? '\\\\' : x < 0x80 ? String.fromCharCode(x) : `\\x${x.toString(16).padStart(2, '0')}`;
  return out;
}

const TYPES: Record<number, string> = { 0o01: 'p', 0o02: 'c', 0o04: 'd', 0o06: 'b', 0o10: 'f', 0o12: 'l', 0o14: 's' };
const typeChar = (mode: number): string => TYPES[(mode >> 12) & 0o17] ?? '?';
const oct = (n: number): string => n.toString(8).padStart(4, '0');
/** Bytes as a JSON string; beyond 64 bytes their length, a SHA-256 prefix of all of them and the first 32. */
const show = (b: Uint8Array): string =>
  b.length <= 64
    ? JSON.stringify(text(b))
    : `len=${b.length} sha256=${createHash('sha256').update(b).digest('hex').slice(0, 16)} ${JSON.stringify(text(b.subarray(0, 32)))}...`;
/** A directory entry's name as printed: JSON-quoted when it holds blanks, ':', quotes or anything unprintable. */
const showName = (name: string): string => (/^[\x21-\x7e]+$/.test(name) && !/[:"\\]/.test(name) ? name : JSON.stringify(name));

function attrLine(a: Attr): string {
  return `type=${typeChar(a.mode)} mode=${oct(a.mode & 0o7777)} nlink=${a.nlink} size=${a.size} uid=${a.uid} gid=${a.gid}`;
}

/** Splits a line into words; "double quoted" words may hold spaces and JSON escapes. */
export function words(line: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line))) {
    if (m[1] === undefined) {
      if (m[2].startsWith('"')) throw new ScriptError('unterminated quote', { word: m[2] });
      out.push(m[2]);
      continue;
    }
    let w: string;
    try {
      w = JSON.parse(`"${m[1]}"`) as string;
    } catch {
      throw new ScriptError('bad escape in a quoted word (JSON escapes only)', { word: m[1] });
    }
    // A name or value cut short at the NUL on the wire would act on another name than the one written.
    if (w.includes('\0')) throw new ScriptError('a word may not hold a NUL (\\u0000)', { word: m[1] });
    out.push(w);
  }
  return out;
}

/** Each command's arguments, in order ([...]: may be left out). */
export const SYNTAX: Record<string, string> = {
  lookup: 'PATH', stat: 'PATH', mtime: 'PATH', ls: '[DIR]', lsraw: '[DIR]', cat: 'PATH', pread: 'PATH OFFSET SIZE',
  write: 'PATH DATA', pwrite: 'PATH OFFSET DATA', create: 'PATH [MODE]', mkdir: 'PATH [MODE]', mknod: 'PATH [MODE]',
  symlink: 'TARGET LINK', readlink: 'PATH', ln: 'PATH NEWPATH', rm: 'PATH', rmdir: 'PATH', mv: 'FROM TO', mvx: 'FROM TO',
  mvn: 'FROM TO', chmod: 'MODE PATH', chown: 'UID GID PATH', truncate: 'PATH SIZE', ftruncate: 'PATH SIZE', utime: 'PATH TIME',
  setxattr: 'PATH NAME VALUE [FLAGS]', getxattr: 'PATH NAME', listxattr: 'PATH', rmxattr: 'PATH NAME', statfs: '[PATH]',
  fsync: 'PATH [data]', fsyncdir: '[DIR]', fallocate: 'PATH OFFSET LENGTH [MODE]', seek: 'PATH data|hole|0-4 OFFSET',
  copy: 'FROM TO [OFFIN [OFFOUT]]', lock: 'PATH rd|wr|un [START [END]]', lockw: 'PATH rd|wr|un [START [END]]',
  access: 'PATH MASK', flush: 'PATH', syncfs: '', interrupt: '', rawop: 'OPCODE [LENGTH]', destroy: '', init: '',
};

/** Arguments each command takes: [at least, at most]. */
export const ARITY: Record<string, [number, number]> = Object.fromEntries(Object.entries(SYNTAX).map(([cmd, syntax]) => {
  const words = syntax.split(' ').filter((w) => w !== '');
  return [cmd, [words.filter((w) => !w.startsWith('[')).length, words.length]];
}));

/** A decimal integer argument in [min, max] (a field's range), or a ScriptError naming it. */
function int(v: string, what: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const n = /^-?[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ScriptError(`${what} must be an integer from ${min} to ${max}`, { value: v });
  return n;
}
const MAX_IO = 1 << 20;
const MAX_ID = 0xfffffffe;

/** An octal mode argument, or a ScriptError naming it. */
function octal(v: string, what: string): number {
  if (!/^[0-7]{1,6}$/.test(v)) throw new ScriptError(`${what} must be an octal number`, { value: v });
  return parseInt(v, 8);
}

/** A path's components with '.' dropped and '..' taken back here (never past the root), as a guest's kernel walks it. */
function normalize(path: string): string[] {
  const out: string[] = [];
  for (const p of path.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') out.pop();
    else out.push(p);
  }
  return out;
}

export class ScriptRunner {
  /** Lookups made while running the current line; forgotten (BATCH_FORGET) when it ends. */
  private looked: number[] = [];
  constructor(private readonly c: FuseClient) {}

  async runScript(text: string, print: (s: string) => void): Promise<void> {
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line || line.startsWith('#')) continue;
      print(`> ${line}`);
      try {
        print(await this.runLine(line));
      } catch (e) {
        // A bad line, or a failure of the front-end or the back-end (not a FUSE error reply: runLine prints those).
        if (e instanceof KumoError) throw new ScriptError(`line ${i + 1}: ${e.message}`, { line, ...e.context });
        throw e;
      }
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
    for (const part of normalize(path)) node = this.track((await this.c.lookup(node, part)).nodeid);
    return node;
  }

  /**
   * Looks a name up first, as the kernel does before UNLINK/RMDIR/RENAME (some servers require a known inode); a name
   * that is not there is ENOENT from the LOOKUP, and nothing more is sent, as from a guest. `missingOk`: the target of a
   * RENAME, which may not exist.
   */
  private async known(parent: number, name: string, missingOk = false): Promise<void> {
    try {
      this.track((await this.c.lookup(parent, name)).nodeid);
    } catch (e) {
      if (!(e instanceof FuseReplyError) || (missingOk && e.code === 'ENOENT')) return;
      throw e;
    }
  }

  /** The directory a path names its last component in, and that component ('.' and '..' resolved here). */
  private async parent(path: string): Promise<[number, string]> {
    const parts = normalize(path);
    const name = parts.pop() ?? '';
    if (name === '') throw new ScriptError('the path names the root, not an entry in a directory', { path });
    return [await this.resolve(parts.join('/')), name];
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
    const arity = ARITY[cmd];
    if (arity === undefined) throw new ScriptError(`unknown command ${cmd}`, { cmd });
    const [least, most] = arity;
    if (w.length - 1 < least || w.length - 1 > most) {
      throw new ScriptError(`${cmd} takes ${least === most ? least : `${least} to ${most}`} argument(s), got ${w.length - 1}`, { line: w.join(' ') });
    }
    switch (cmd) {
      case 'lookup':
      case 'stat': {
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
                names.push(`${showName(text(e.dirent.name))}:${typeChar(e.dirent.type << 12)}`);
                off = e.dirent.off;
              }
            } else {
              const es = await c.readdir(n, fh, off);
              if (es.length === 0) break;
              for (const e of es) {
                names.push(`${showName(text(e.name))}:${typeChar(e.type << 12)}`);
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
        return this.withFile(a1, O_RDONLY, async (n, fh) => `ok ${show(await c.read(n, fh, int(a2, 'offset'), int(a3, 'size', 0, MAX_IO)))}`);
      case 'write':
      case 'pwrite': {
        const data = nameBytes(cmd === 'write' ? a2 : a3);
        // Checked before the file is opened (write truncates it): one WRITE carries at most 1 MiB.
        if (data.length > MAX_IO) throw new ScriptError(`${cmd} data must be at most ${MAX_IO} bytes`, { len: data.length });
        const off = cmd === 'write' ? 0 : int(a2, 'offset');
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
        const r = await c.create(p, name, O_RDWR | O_CREAT | 0o200 /* O_EXCL */, 0o100000 | octal(a2 || '644', 'mode'));
        this.track(r.entry.nodeid);
        await c.release(r.entry.nodeid, r.fh);
        return `ok ${attrLine(r.entry.attr)}`;
      }
      case 'mkdir': {
        const [p, name] = await this.parent(a1);
        const e = await c.mkdir(p, name, octal(a2 || '755', 'mode'));
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'mknod': {
        const [p, name] = await this.parent(a1);
        const e = await c.mknod(p, name, 0o010000 | octal(a2 || '644', 'mode'));
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'symlink': {
        const [p, name] = await this.parent(a2);
        const e = await c.symlink(p, name, a1);
        this.track(e.nodeid);
        return `ok ${attrLine(e.attr)}`;
      }
      case 'readlink':
        return `ok ${show(await c.readlink(await this.resolve(a1)))}`;
      case 'ln': {
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
        const [p1, n1] = await this.parent(a1);
        const [p2, n2] = await this.parent(a2);
        await this.known(p1, n1);
        await this.known(p2, n2, true);
        await c.rename(p1, n1, p2, n2, cmd === 'mv' ? undefined : cmd === 'mvx' ? 2 : 1);
        return 'ok';
      }
      case 'chmod': {
        const mode = octal(a1, 'mode');
        return `ok ${attrLine(await c.setattr(await this.resolve(a2), { valid: Fattr.MODE, mode }))}`;
      }
      case 'chown': {
        const uid = int(a1, 'uid', 0, MAX_ID);
        const gid = int(a2, 'gid', 0, MAX_ID);
        return `ok ${attrLine(await c.setattr(await this.resolve(a3), { valid: Fattr.UID | Fattr.GID, uid, gid }))}`;
      }
      case 'truncate': {
        const size = int(a2, 'size');
        return `ok ${attrLine(await c.setattr(await this.resolve(a1), { valid: Fattr.SIZE, size }))}`;
      }
      case 'ftruncate': {
        const size = int(a2, 'size');
        return this.withFile(a1, O_RDWR, async (n, fh) => `ok ${attrLine(await c.setattr(n, { valid: Fattr.SIZE | Fattr.FH, fh, size }))}`);
      }
      case 'utime': {
        const t = int(a2, 'time', -Number.MAX_SAFE_INTEGER);
        await c.setattr(await this.resolve(a1), { valid: Fattr.ATIME | Fattr.MTIME, atime: t, mtime: t });
        const a = await c.getattr(await this.resolve(a1));
        return `ok mtime=${a.mtime} atime=${a.atime}`;
      }
      case 'setxattr':
        await c.setxattr(await this.resolve(a1), a2, nameBytes(a3), int(a4 || '0', 'flags'));
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
        return `ok ${text(b).split('\0').filter(Boolean).sort().join(' ')}`;
      }
      case 'rmxattr':
        await c.removexattr(await this.resolve(a1), a2);
        return 'ok';
      case 'statfs': {
        const s = await c.statfs(await this.resolve(a1));
        return `ok namelen=${s.namelen} bsize=${s.bsize}`;
      }
      case 'fsync':
        if (a2 !== '' && a2 !== 'data') throw new ScriptError('fsync takes "data" or nothing after the path', { value: a2 });
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
      case 'fallocate': {
        const [off, len, mode] = [int(a2, 'offset'), int(a3, 'length'), int(a4 || '0', 'mode')];
        return this.withFile(a1, O_RDWR, async (n, fh) => {
          await c.fallocate(n, fh, off, len, mode);
          return `ok ${attrLine(await c.getattr(n))}`;
        });
      }
      case 'seek': {
        if (!/^-?\d+$/.test(a3) || BigInt(a3) < -(2n ** 63n) || BigInt(a3) >= 2n ** 63n) throw new ScriptError('seek offset must be a 64-bit integer', { value: a3 });
        const whence = a2 === 'data' ? 3 : a2 === 'hole' ? 4 : int(a2, 'whence (data, hole or 0-4)', 0, 4);
        return this.withFile(a1, O_RDONLY, async (n, fh) => `ok ${await c.lseek(n, fh, BigInt(a3), whence)}`);
      }
      case 'copy': {
        const [offIn, offOut] = [int(a3 || '0', 'input offset'), int(a4 || '0', 'output offset')];
        return this.withFile(a1, O_RDONLY, (ni, fhi) =>
          this.withFile(a2, O_RDWR, async (no, fho) => `ok copied=${await c.copyFileRange(ni, fhi, offIn, no, fho, offOut, 1 << 20)}`),
        );
      }
      case 'lock':
      case 'lockw': {
        const type = ['rd', 'wr', 'un'].indexOf(a2);
        if (type < 0) throw new ScriptError('lock type must be rd, wr or un', { value: a2 });
        const bound = (v: string): boolean => v === '' || (/^[0-9]+$/.test(v) && BigInt(v) < 2n ** 64n);
        if (!bound(a3) || !bound(a4)) throw new ScriptError('lock range must be 64-bit unsigned integers', { start: a3, end: a4 });
        return this.withFile(a1, O_RDWR, async (n, fh) => {
          await c.setlk(n, fh, 1n, { start: BigInt(a3 || 0), end: BigInt(a4 || '9223372036854775807'), type, pid: 1 }, cmd === 'lockw');
          // A second owner sees the first owner's lock.
          const g = await c.getlk(n, fh, 2n, { start: 0n, end: 0x7fffffffffffffffn, type: 1, pid: 2 });
          return `ok conflict=${g.type === 2 ? 'none' : `${g.type === 0 ? 'rd' : 'wr'}:${g.start}-${g.end}`}`;
        });
      }
      case 'access':
        await c.access(await this.resolve(a1), int(a2, 'mask'));
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
        const len = int(a2 || '0', 'length');
        if (len < 0 || len > 1 << 20) throw new ScriptError('rawop length must be 0..1048576', { len });
        await c.call(int(a1, 'opcode'), FUSE_ROOT_ID, [new Uint8Array(len)], 64, `OP_${a1}`);
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
