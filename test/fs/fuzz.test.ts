import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, rmSync, readdirSync, lstatSync } from 'node:fs';
import { join } from 'node:path';
import { FuseClient, FUSE_ROOT_ID, Init, Op, encodeSecctx, encodeSuppGroups, InHeader, OutHeader, IN_HEADER_SIZE, OUT_HEADER_SIZE } from '../../protocol/fuse/index.js';
import { PassthroughFs } from '../../backends/virtiofsd/passthrough.js';
import { FuseServer } from '../../backends/virtiofsd/server.js';
import { BufferIo } from '../../backends/virtiofsd/fuse-io.js';
import { defaultFsOptions, type FsOptions } from '../../backends/virtiofsd/options.js';
import { parseXattrMap } from '../../backends/virtiofsd/xattrmap.js';
import { LocalTransport } from './local-transport.js';
import { fuzzSeed, putU64, Rng } from '../fuzz-rng.js';

/**
 * Seeded random FUSE traffic straight into the server: well-formed requests with random fields (handles and
 * nodeids drawn from what earlier replies returned, plus stale and invented ones), the same requests damaged,
 * and random bytes behind a header. Every request must get a consistent reply or be dropped; nothing may
 * throw or fail inside the server; nothing outside the share may change.
 */

// Thousands of refused requests each log a warning; only errors (bugs) should reach the report.
vi.hoisted(() => {
  process.env.KUMO_LOG = 'error';
});

const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 20_000);
const CANARY = 'CANARY-outside-the-share';

/** Argument layout of one opcode: struct size, where handles / nodeids / bounded numbers sit, names after it. */
interface Shape {
  size: number;
  fh?: number[];
  nodeid?: number[];
  /** [offset, max] of u64 fields kept small (lengths that would otherwise fill the disk). */
  bound?: [number, number][];
  names?: number;
  data?: boolean;
  /** Open flags at offset 0, usually sensible; true: a mode follows at offset 4. */
  flags?: boolean;
}

const SHAPES: Record<number, Shape> = {
  [Op.LOOKUP]: { size: 0, names: 1 },
  [Op.FORGET]: { size: 8, bound: [[0, 3]] },
  [Op.GETATTR]: { size: 16, fh: [8] },
  [Op.SETATTR]: { size: 88, fh: [8], bound: [[16, 1 << 20]] },
  [Op.READLINK]: { size: 0 },
  [Op.SYMLINK]: { size: 0, names: 2 },
  [Op.MKNOD]: { size: 16, names: 1, flags: true },
  [Op.MKDIR]: { size: 8, names: 1, flags: true },
  [Op.UNLINK]: { size: 0, names: 1 },
  [Op.RMDIR]: { size: 0, names: 1 },
  [Op.RENAME]: { size: 8, nodeid: [0], names: 2 },
  [Op.LINK]: { size: 8, nodeid: [0], names: 1 },
  [Op.OPEN]: { size: 8, flags: false },
  [Op.READ]: { size: 40, fh: [0], bound: [[8, 1 << 22], [16, 1 << 17]] },
  [Op.WRITE]: { size: 40, fh: [0], bound: [[8, 1 << 22]], data: true },
  [Op.STATFS]: { size: 0 },
  [Op.RELEASE]: { size: 24, fh: [0] },
  [Op.FSYNC]: { size: 16, fh: [0] },
  [Op.SETXATTR]: { size: 8, names: 2 },
  [Op.GETXATTR]: { size: 8, bound: [[0, 1 << 17]], names: 1 },
  [Op.LISTXATTR]: { size: 8, bound: [[0, 1 << 17]] },
  [Op.REMOVEXATTR]: { size: 0, names: 1 },
  [Op.FLUSH]: { size: 24, fh: [0] },
  [Op.OPENDIR]: { size: 8 },
  [Op.READDIR]: { size: 40, fh: [0], bound: [[16, 1 << 17]] },
  [Op.READDIRPLUS]: { size: 40, fh: [0], bound: [[16, 1 << 17]] },
  [Op.RELEASEDIR]: { size: 24, fh: [0] },
  [Op.FSYNCDIR]: { size: 16, fh: [0] },
  [Op.GETLK]: { size: 48, fh: [0] },
  [Op.SETLK]: { size: 48, fh: [0] },
  [Op.SETLKW]: { size: 48, fh: [0] },
  [Op.ACCESS]: { size: 8 },
  [Op.CREATE]: { size: 16, names: 1, flags: true },
  [Op.INTERRUPT]: { size: 8 },
  [Op.BMAP]: { size: 16 },
  [Op.IOCTL]: { size: 32 },
  [Op.BATCH_FORGET]: { size: 8, bound: [[0, 8]] },
  [Op.FALLOCATE]: { size: 32, fh: [0], bound: [[8, 1 << 22], [16, 1 << 20]] },
  [Op.RENAME2]: { size: 16, nodeid: [0], names: 2 },
  [Op.LSEEK]: { size: 24, fh: [0] },
  [Op.COPY_FILE_RANGE]: { size: 56, fh: [0, 24], nodeid: [16], bound: [[8, 1 << 22], [32, 1 << 22], [40, 1 << 20]] },
  [Op.SYNCFS]: { size: 8 },
  [Op.INIT]: { size: 64 },
  [Op.DESTROY]: { size: 0 },
};
const OPCODES = Object.keys(SHAPES).map(Number).filter((o) => o !== Op.DESTROY);
const COMMON = [Op.LOOKUP, Op.CREATE, Op.MKDIR, Op.OPEN, Op.READ, Op.WRITE, Op.GETATTR, Op.SETATTR, Op.OPENDIR, Op.READDIRPLUS,
  Op.RELEASE, Op.FORGET, Op.UNLINK, Op.RENAME, Op.SYMLINK, Op.LINK, Op.SETXATTR, Op.GETXATTR, Op.SETLK, Op.GETLK];
/** Ops whose random bytes could ask for gigabytes on disk: only sent with bounded fields. */
const BOUNDED_ONLY = new Set<number>([Op.FALLOCATE, Op.COPY_FILE_RANGE]);
const NAMES = ['a', 'b', 'c', 'dir', 'sub', 'link', 'x.txt', 'user.k', 'trusted.k', 'security.capability', '.', '..', '', '../escape',
  'a/b', '/abs', 'n'.repeat(255), 'n'.repeat(300), 'proc'];
const NO_REPLY = new Set<number>([Op.FORGET, Op.BATCH_FORGET]);

/** Every file and link under dir (skipping `skip`), with sizes: what must not change outside the share. */
function snapshot(dir: string, skip: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (p === skip) continue;
      const st = lstatSync(p);
      out.push(`${p} ${st.mode.toString(8)} ${st.size}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

const LABELLED = new Set<number>([Op.MKDIR, Op.MKNOD, Op.SYMLINK, Op.CREATE]);

const VARIANTS: { name: string; opts: Partial<FsOptions>; init?: bigint }[] = [
  { name: 'inode fds', opts: {} },
  // The guest sends unmasked modes with umasks, extended setxattr_in, kill-privilege flags, flock requests and
  // security contexts after creations' names; xattr names go through a map.
  {
    name: 'POSIX ACLs, xattr map, security labels, killpriv_v2, flock, supplementary groups',
    opts: { posixAcl: true, xattrmap: parseXattrMap('/unsupported/all/security./security./ /map/trusted./user.virtiofs./'), securityLabel: true, killPrivV2: true, flock: true },
    init: Init.ASYNC_READ | Init.BIG_WRITES | Init.MAX_PAGES | Init.INIT_EXT | Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT | Init.POSIX_LOCKS |
      Init.SECURITY_CTX | Init.HANDLE_KILLPRIV_V2 | Init.FLOCK_LOCKS | Init.CREATE_SUPP_GROUP,
  },
  // A 4-entry fd cache: inodes are reopened from their file handles all the time.
  { name: 'file handles, 4 inode fds open', opts: { inodeFileHandles: 'prefer', openInodeFds: 4 } },
  { name: 'read-only share, writeback', opts: { readonly: true, writeback: true } },
];

for (const v of VARIANTS) {
  describe(`virtio-fs server under random FUSE traffic: ${v.name}`, () => {
    let base: string;
    let share: string;
    let fs: PassthroughFs;
    let server: FuseServer;

    beforeEach(() => {
      base = mkdtempSync('/tmp/kumo-fs-fuzz-');
      share = join(base, 'share');
      mkdirSync(share);
      mkdirSync(join(base, 'outside'));
      writeFileSync(join(base, 'outside', 'secret'), CANARY);
      fs = new PassthroughFs({ ...defaultFsOptions(share), xattr: true, posixLock: true, ...v.opts });
      server = new FuseServer(fs);
    });
    afterEach(() => {
      fs.close();
      rmSync(base, { recursive: true, force: true });
    });

    it('answers every request consistently, never fails inside, never touches anything outside the share', async () => {
      const c = new FuseClient(new LocalTransport(server));
      await c.init(v.init);
      mkdirSync(join(share, 'dir'));
      writeFileSync(join(share, 'a'), 'hello');
      const before = snapshot(base, share);
      const shareBefore = snapshot(share, '');
      const rng = new Rng(fuzzSeed(0x6b756d6f));
      // What replies handed out; invented numbers (never handed out, or stale) are mixed in below.
      const nodeids = [FUSE_ROOT_ID];
      const fhs: number[] = [];
      const nodeid = (): number => (rng.chance(0.9) ? rng.pick(nodeids) : rng.chance(0.5) ? rng.below(8) : rng.u32());
      const fh = (): number => (fhs.length > 0 && rng.chance(0.9) ? rng.pick(fhs) : rng.chance(0.5) ? rng.below(8) : rng.u32());
      let unique = 1000n;
      const counts = { replied: 0, ok: 0, dropped: 0 };
      const okBy = new Map<number, number>();
      const labels = ((v.init ?? 0n) & Init.SECURITY_CTX) !== 0n;
      const suppGroups = ((v.init ?? 0n) & Init.CREATE_SUPP_GROUP) !== 0n;

      for (let i = 0; i < REQUESTS; i++) {
        // DESTROY wipes every nodeid and handle, so it stays rare; common ops get extra weight.
        const opcode = rng.chance(0.0005) ? Op.DESTROY : rng.chance(0.03) ? rng.below(70) : rng.chance(0.4) ? rng.pick(COMMON) : rng.pick(OPCODES);
        const shape = SHAPES[opcode] ?? { size: rng.below(64) };
        const rawArgs = rng.chance(0.1) && !BOUNDED_ONLY.has(opcode);
        const args = rng.bytes(shape.size);
        if (!rawArgs) {
          for (const at of shape.fh ?? []) putU64(args, at, fh());
          for (const at of shape.nodeid ?? []) putU64(args, at, nodeid());
          for (const [at, max] of shape.bound ?? []) putU64(args, at, rng.below(max + 1));
          if (shape.flags !== undefined && rng.chance(0.7)) {
            args.writeUInt32LE(rng.pick([0, 1, 2, 0o1101, 0o2002, 0o102, 0o302]), 0);
            if (shape.flags) args.writeUInt32LE(rng.pick([0o100644, 0o755, 0o644, 0o40755]), 4);
          }
        }
        const parts: Buffer[] = [args];
        for (let k = 0; k < (shape.names ?? 0); k++) parts.push(Buffer.from(rng.pick(NAMES) + '\0'));
        // With FUSE_SECURITY_CTX a creation ends with a security context block: mostly well-formed, some garbage.
        let extBytes = 0;
        if (labels && LABELLED.has(opcode) && !rawArgs) {
          parts.push(Buffer.from(rng.chance(0.8) ? encodeSecctx(rng.chance(0.5) ? null : { name: Buffer.from(rng.pick(['user.l', 'trusted.l', 'security.selinux'])), value: rng.bytes(rng.below(40)) }) : rng.bytes(rng.below(24))));
          extBytes = parts[parts.length - 1].length;
        }
        // With FUSE_CREATE_SUPP_GROUP some creations carry a group as a request extension (total_extlen then
        // counts the label block too, as Linux 6.2+ sends them), or a garbage extension, or a wrong total_extlen.
        let totalExtlen = 0;
        if (suppGroups && LABELLED.has(opcode) && !rawArgs && rng.chance(0.3)) {
          parts.push(Buffer.from(rng.chance(0.8) ? encodeSuppGroups([rng.chance(0.5) ? 0 : rng.below(2000)]) : rng.bytes(8 * (1 + rng.below(3)))));
          extBytes += parts[parts.length - 1].length;
          totalExtlen = rng.chance(0.9) ? Math.ceil(extBytes / 8) : rng.below(64);
        }
        if (shape.data) {
          const data = rng.bytes(rng.below(9000));
          if (!rawArgs) args.writeUInt32LE(rng.chance(0.9) ? data.length : rng.u32(), 16);
          parts.push(data);
        }
        if (opcode === Op.BATCH_FORGET && !rawArgs) {
          for (let k = 0; k < args.readUInt32LE(0); k++) {
            const one = Buffer.alloc(16);
            putU64(one, 0, nodeid());
            putU64(one, 8, rng.below(3));
            parts.push(one);
          }
        }
        const body = Buffer.concat(parts);
        const req = Buffer.alloc(IN_HEADER_SIZE + body.length);
        const u = unique++;
        InHeader.encode({ len: req.length, opcode, unique: u, nodeid: nodeid(), uid: rng.chance(0.8) ? 0 : rng.below(2000),
          gid: rng.chance(0.8) ? 0 : rng.below(2000), pid: 1, totalExtlen }, req, 0);
        body.copy(req, IN_HEADER_SIZE);

        // Damage: a wrong length field, a cut request, extra bytes, or a reply buffer too small.
        let sent: Buffer = req;
        const damage = rng.below(10);
        if (damage === 0) req.writeUInt32LE(rng.chance(0.5) ? rng.below(req.length + 64) : rng.u32(), 0);
        else if (damage === 1) sent = req.subarray(0, rng.below(req.length + 1));
        else if (damage === 2) sent = Buffer.concat([req, rng.bytes(rng.below(64))]);
        // A FORGET from a guest offers no reply space at all.
        const outLen = damage === 3 ? rng.below(40) : NO_REPLY.has(opcode) && rng.chance(0.5) ? 0 : OUT_HEADER_SIZE + rng.pick([0, 8, 16, 128, 4096, 1 << 17]);
        const outBufs = outLen === 0 ? [] : [Buffer.alloc(outLen)];
        // Sometimes the request arrives in two descriptors, cut anywhere.
        const cut = sent.length > 1 && rng.chance(0.2) ? 1 + rng.below(sent.length - 1) : sent.length;
        const inBufs = cut < sent.length ? [sent.subarray(0, cut), sent.subarray(cut)] : [sent];

        let n: number;
        try {
          n = server.handle(new BufferIo(inBufs, outBufs));
        } catch (e) {
          throw new Error(`request ${i} (opcode ${opcode}) threw: ${(e as Error).stack}`);
        }
        expect(n, `request ${i} opcode ${opcode}`).toBeGreaterThanOrEqual(0);
        expect(n, `request ${i} opcode ${opcode}`).toBeLessThanOrEqual(outLen);
        if (n === 0) {
          counts.dropped++;
          continue;
        }
        const out = outBufs[0];
        expect(n).toBeGreaterThanOrEqual(OUT_HEADER_SIZE);
        const h = OutHeader.decode(out);
        expect(h.len).toBe(n);
        expect(h.unique).toBe(u);
        expect(h.error).toBeLessThanOrEqual(0);
        expect(h.error).toBeGreaterThan(-4096);
        if (h.error !== 0) expect(n).toBe(OUT_HEADER_SIZE);
        if (NO_REPLY.has(opcode) && damage >= 3 && !rawArgs) throw new Error(`request ${i}: a reply to a well-formed ${opcode}`);
        counts.replied++;
        if (h.error !== 0) continue;
        counts.ok++;
        okBy.set(opcode, (okBy.get(opcode) ?? 0) + 1);
        if (opcode === Op.DESTROY) {
          // The guest unmounted: every nodeid and handle is gone; mount again.
          await c.init(v.init);
          nodeids.splice(1);
          fhs.splice(0);
          continue;
        }
        // Learn nodeids and handles the way a guest would, so later requests reach real inodes and files.
        const entryOps: number[] = [Op.LOOKUP, Op.MKDIR, Op.MKNOD, Op.SYMLINK, Op.LINK, Op.CREATE];
        if (entryOps.includes(opcode) && n >= OUT_HEADER_SIZE + 8) nodeids.push(Number(out.readBigUInt64LE(16)));
        if ((opcode === Op.OPEN || opcode === Op.OPENDIR) && n >= OUT_HEADER_SIZE + 8) fhs.push(Number(out.readBigUInt64LE(16)));
        if (opcode === Op.CREATE && n >= OUT_HEADER_SIZE + 136) fhs.push(Number(out.readBigUInt64LE(16 + 128)));
        if (nodeids.length > 64) nodeids.splice(1, 1);
        if (fhs.length > 64) fhs.splice(0, 1);
      }

      if (process.env.FUZZ_DEBUG) console.log(counts, [...okBy].sort((a, b) => a[0] - b[0]));
      expect(server.stats.internal).toBe(0);
      // The traffic reached the filesystem, not only the framing checks: many kinds of request succeeded.
      expect(counts.ok).toBeGreaterThan(REQUESTS / 30);
      expect(okBy.size).toBeGreaterThanOrEqual(v.opts.readonly ? 12 : 20);
      expect(counts.dropped).toBeGreaterThan(0);
      expect(snapshot(base, share)).toEqual(before);
      if (v.opts.readonly) expect(snapshot(share, '')).toEqual(shareBefore);
      expect(readFileSync(join(base, 'outside', 'secret'), 'utf8')).toBe(CANARY);
      // Still serving: a fresh INIT (the traffic may have sent DESTROY) and a root GETATTR.
      const c2 = new FuseClient(new LocalTransport(server));
      await c2.init(v.init).catch(() => undefined); // (--posix-acl refuses an INIT without ACL flags)
      expect((await c2.getattr(FUSE_ROOT_ID)).mode & 0o170000).toBe(0o040000);
    }, 120_000);
  });
}
