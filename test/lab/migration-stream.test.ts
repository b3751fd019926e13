import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { Qmp } from './fixtures/migration-io.js';
import { StreamCheck, type StreamReport } from './fixtures/migration-stream.js';

// The live-migration fixture's stream check (it tells a stream the source sent wrong from one the destination read
// wrong) against a real QEMU stream: a paused q35 guest (TCG, no kernel) migrated into a file, then that file whole,
// cut into small pieces, and with one page record damaged.

const QEMU = process.env.KUMO_LAB_QEMU ?? 'qemu-system-x86_64';
const why = spawnSync(QEMU, ['--version']).status === 0 ? null : `${QEMU} missing (apt-get install qemu-system-x86)`;
if (why) console.warn(`test/lab/migration-stream.test.ts skipped: ${why}`);

let dir = '';
let stream: Buffer = Buffer.alloc(0);
/** QEMU's own count of the pages it sent whole and as zero pages. */
let sent = { normal: 0, duplicate: 0 };

async function migrateToFile(file: string): Promise<void> {
  const qmpFile = path.join(dir, 'qmp.sock');
  const q: ChildProcess = spawn(QEMU, ['-machine', 'q35,memory-backend=mem', '-object', 'memory-backend-memfd,id=mem,size=64M,share=on',
    '-m', '64M', '-S', '-nodefaults', '-display', 'none', '-accel', 'tcg', '-qmp', `unix:${qmpFile},server=on,wait=off`], { stdio: 'ignore' });
  try {
    const qmp = await Qmp.connect(qmpFile, 20_000);
    await qmp.cmd('migrate', { uri: `exec:cat > ${file}` });
    let done: Record<string, unknown> = {};
    for (const until = Date.now() + 20_000; Date.now() < until; await sleep(100)) {
      done = await qmp.cmd('query-migrate');
      if (done.status === 'completed' || done.status === 'failed') break;
    }
    expect(done.status).toBe('completed');
    const ram = done.ram as { normal: number; duplicate: number };
    sent = { normal: ram.normal, duplicate: ram.duplicate };
    qmp.close();
  } finally {
    q.kill('SIGKILL');
  }
}

function check(b: Buffer, piece = b.length): StreamReport {
  const c = new StreamCheck();
  for (let o = 0; o < b.length; o += piece) c.push(b.subarray(o, o + piece));
  return c.report();
}

/**
 * Offset of the n-th whole-page record (RAM_SAVE_FLAG_PAGE|CONTINUE, 0x28, in its header's last byte), past the start;
 * a look-alike inside a page's data is told apart by the check itself stopping right there on a stream cut at it.
 */
function pageHeaderAt(b: Buffer, n: number): number {
  let seen = 0;
  for (let o = 1024; o + 8 <= b.length; o++) {
    if (b[o + 7] !== 0x28 || b.readUInt32BE(o) !== 0 || (b[o + 6] & 0x0f) !== 0) continue;
    const r = check(b.subarray(0, o));
    if (r.state === 'checking' && r.checkedTo === o && ++seen === n) return o;
  }
  throw new Error('no such page record');
}

describe.skipIf(why !== null)('migration stream check', () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kumo-migstream-'));
    const file = path.join(dir, 'stream.bin');
    await migrateToFile(file);
    stream = fs.readFileSync(file);
  }, 60_000);
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('accounts for every RAM page QEMU sent, up to the device state', () => {
    const r = check(stream);
    expect(r.state).toBe('stopped');
    expect(r.note).toMatch(/^device state begins/);
    expect({ normal: r.pages, duplicate: r.zeroPages }).toEqual(sent);
    expect(r.sections).toBeGreaterThanOrEqual(2);
    expect(r.bytes).toBe(stream.length);
  });

  it('gives the same answer however the stream is cut', () => {
    const whole = check(stream);
    for (const piece of [1, 7, 4097, 65536]) expect(check(stream, piece)).toEqual(whole);
  });

  it('points at a page record whose header was damaged', () => {
    const at = pageHeaderAt(stream, 3);
    const bad = Buffer.from(stream);
    bad.fill(0, at, at + 8);
    const r = check(bad, 4096);
    expect(r.state).toBe('bad');
    expect(r.checkedTo).toBe(at);
    expect(r.note).toBe('unknown RAM flags 0x0');
    expect(r.context).toMatch(/\|0{16}/);
  });

  it('notices bytes missing from the middle', () => {
    const at = pageHeaderAt(stream, 2);
    const cut = Buffer.concat([stream.subarray(0, at + 100), stream.subarray(at + 200)]);
    expect(check(cut).state).toBe('bad');
  });
});
