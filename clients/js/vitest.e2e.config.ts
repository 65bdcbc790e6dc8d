import { defineConfig } from 'vitest/config';

// Real Chromium against the real server: one file at a time (they share the machine's two
// cores and each starts its own server), generous timeouts for grace periods and reconnects.
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    environment: 'node',
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 180_000,
    globalSetup: ['e2e/global-setup.ts'],
  },
});
