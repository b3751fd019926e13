import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // 2-core machines: KVM, lab and peer-process tests fight for CPU; keep file concurrency low.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default', './test/summary-reporter.ts'],
    // Info logs from devices and daemons drown the report; KUMO_LOG=info brings them back.
    env: { KUMO_LOG: process.env.KUMO_LOG ?? 'warn' },
  },
});
