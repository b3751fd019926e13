// Per queue-pair counters in a SharedArrayBuffer: the worker bumps plain Float64 slots, the main
// thread reads them (approximately current) for logs and the stats dump.
export const COUNTER_NAMES = [
  'rxFrames', 'rxBytes', 'txFrames', 'txBytes',
  'rxNoBuffers', 'rxDropped', 'rxOversized', 'rxBadChain',
  'txDropped', 'txOversized', 'txRunt', 'txBadHeader', 'txBadChain', 'txRejected',
  'rxKicks', 'txKicks', 'tapPauses', 'txBlocked',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];
export const COUNTER = Object.fromEntries(COUNTER_NAMES.map((n, i) => [n, i])) as Record<CounterName, number>;

export function counterBuffer(pairs: number): SharedArrayBuffer {
  return new SharedArrayBuffer(pairs * COUNTER_NAMES.length * 8);
}

export function counterView(sab: SharedArrayBuffer, pair: number): Float64Array {
  return new Float64Array(sab, pair * COUNTER_NAMES.length * 8, COUNTER_NAMES.length);
}

export function readCounters(view: Float64Array): Record<CounterName, number> {
  return Object.fromEntries(COUNTER_NAMES.map((n, i) => [n, view[i]])) as Record<CounterName, number>;
}

export function sumCounters(sab: SharedArrayBuffer, pairs: number): Record<CounterName, number> {
  const total = new Float64Array(COUNTER_NAMES.length);
  for (let p = 0; p < pairs; p++) {
    const v = counterView(sab, p);
    for (let i = 0; i < total.length; i++) total[i] += v[i];
  }
  return readCounters(total);
}
