import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (path: string) => fileURLToPath(new URL(`./src/${path}`, import.meta.url));

export default defineConfig({
  resolve: {
    // Tests and examples import the package by its name; in the repository that is the source.
    alias: [
      { find: /^roomwire$/, replacement: src('index.ts') },
      { find: /^roomwire\/ws$/, replacement: src('transports/ws.ts') },
      { find: /^roomwire\/auth\/jwt$/, replacement: src('auth/jwt.ts') },
      { find: /^roomwire\/redis$/, replacement: src('backplanes/redis.ts') },
      { find: /^roomwire\/client$/, replacement: src('client/index.ts') },
    ],
  },
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Integration tests open real sockets; two workers match the CI machine's two cores.
    maxWorkers: 2,
  },
});
