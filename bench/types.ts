/** One printed comparison table; every bench module returns a list of them. */
export interface BenchTable {
  title: string;
  columns: string[];
  rows: (string | number)[][];
  notes?: string[];
}

export type BenchModule = { run(): Promise<BenchTable[]> };
