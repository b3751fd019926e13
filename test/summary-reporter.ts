import type { Reporter, TestModule } from 'vitest/node';

/** Prints one closing line in the plain "N passed, N failed, N skipped" form CI systems read. */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for (const m of testModules) {
      if (m.state() === 'failed' && [...m.children.allTests()].length === 0) failed++;
      for (const t of m.children.allTests()) {
        const s = t.result().state;
        if (s === 'passed') passed++;
        else if (s === 'failed') failed++;
        // Meant to run but did not: a beforeAll of its suite failed or timed out (a hung lab, say).
        else if (t.options.mode === 'run' || t.options.mode === 'only') failed++;
        else skipped++;
      }
    }
    process.stdout.write(`\nkumo: ${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
