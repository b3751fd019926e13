/** Latency histogram with 1 µs buckets up to 1 s (the last bucket collects the rest); no allocation per sample. */
export class LatencyHistogram {
  private readonly buckets = new Uint32Array(1_000_001);
  count = 0;
  private sumUs = 0;

  record(us: number): void {
    const b = us < 0 ? 0 : us >= 1_000_000 ? 1_000_000 : Math.floor(us);
    this.buckets[b]++;
    this.count++;
    this.sumUs += us;
  }

  percentile(p: number): number {
    if (this.count === 0) return 0;
    const want = Math.ceil((p / 100) * this.count);
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i];
      if (seen >= want) return i;
    }
    return this.buckets.length - 1;
  }

  get meanUs(): number {
    return this.count === 0 ? 0 : this.sumUs / this.count;
  }
}
