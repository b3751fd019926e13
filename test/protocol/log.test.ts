import { describe, expect, it, vi } from 'vitest';
import { pino } from 'pino';
import { flushHeldWarnings, WarnLimiter } from '../../protocol/log.js';

describe('WarnLimiter', () => {
  it('passes `burst` warnings per window, holds back the rest and reports their count with the next line', () => {
    vi.useFakeTimers();
    try {
      const lines: { msg: string; heldBack?: number }[] = [];
      const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
      const w = new WarnLimiter(log, 3, 1000);
      for (let k = 0; k < 10; k++) w.warn({ k }, 'bad request');
      expect(lines.length).toBe(3);
      vi.advanceTimersByTime(1000);
      w.warn({}, 'bad request');
      expect(lines.length).toBe(4);
      expect(lines[3].heldBack).toBe(7);
      w.warn({}, 'bad request');
      expect(lines[4].heldBack).toBeUndefined();
    } finally {
      vi.useRealTimers();
    }
  });

  it('limits info and error lines (a guest looping on device resets), and skips levels not logged', () => {
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
    const w = new WarnLimiter(log, 4, 60_000);
    for (let k = 0; k < 10; k++) w.info({ k }, 'activated'); // below the level: costs nothing, uses no budget
    for (let k = 0; k < 10; k++) w.error({ k }, 'activation failed');
    expect(lines.map((l) => [l.level, l.msg])).toEqual(Array(4).fill([50, 'activation failed']));
  });

  it('gives each message its own budget (a flood of one does not hide another) within twice `burst` for all', () => {
    vi.useFakeTimers();
    try {
      const lines: { msg: string; heldBack?: number }[] = [];
      const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
      const w = new WarnLimiter(log, 2, 1000);
      for (let k = 0; k < 100; k++) w.warn({ k }, 'INIT again');
      w.error({}, 'unsupported FUSE version');
      expect(lines.map((l) => l.msg)).toEqual(['INIT again', 'INIT again', 'unsupported FUSE version']);
      for (let k = 0; k < 100; k++) w.warn({}, `refused ${k}`);
      expect(lines.length).toBe(4);
      vi.advanceTimersByTime(1000);
      w.warn({}, 'INIT again');
      expect(lines[4].heldBack).toBe(98);
      // Messages made from peer values: together they stay within twice `burst` a window (and, beyond 64, share one budget).
      for (let s = 0; s < 10; s++) {
        vi.advanceTimersByTime(1000);
        for (let k = 0; k < 100; k++) w.warn({}, `refused ${s * 100 + k}`);
      }
      expect(lines.length).toBeLessThanOrEqual(5 + 10 * 4);
    } finally {
      vi.useRealTimers();
    }
  });

  it('says how many lines a flood held back once it stops, with no later line to carry the count', () => {
    vi.useFakeTimers();
    try {
      const lines: { level: number; msg: string; heldBack?: number }[] = [];
      const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
      const w = new WarnLimiter(log, 2, 1000);
      for (let k = 0; k < 50; k++) w.error({ k }, 'queue handler failed');
      for (let k = 0; k < 5; k++) w.warn({ k }, 'kick fd hung up');
      expect(lines.length).toBe(4);
      // A thread whose loop never yields asks for it; within the window nothing is said yet.
      flushHeldWarnings();
      expect(lines.length).toBe(4);
      vi.advanceTimersByTime(1100); // the timer of a thread with an event loop
      expect(lines.slice(4)).toEqual([
        expect.objectContaining({ level: 50, msg: 'queue handler failed', heldBack: 48, summary: true }),
        expect.objectContaining({ level: 40, msg: 'kick fd hung up', heldBack: 3 }),
      ]);
      vi.advanceTimersByTime(5000);
      flushHeldWarnings();
      expect(lines.length).toBe(6); // said once
    } finally {
      vi.useRealTimers();
    }
  });
});
