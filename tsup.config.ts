import { rmSync } from 'node:fs';
import { defineConfig, type Options } from 'tsup';

const shared: Options = {
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  // Peer dependencies (ws, jose) and runtime dependencies stay external: nothing is bundled.
  skipNodeModulesBundle: true,
  // Code the entries share (the error classes above all) goes into shared chunks, in the
  // CJS build too: otherwise `roomwire/auth/jwt` would throw a HandshakeError class of its
  // own copy, and `instanceof HandshakeError` from `roomwire` would be false for it.
  splitting: true,
  outExtension: ({ format }) => ({ js: format === 'cjs' ? '.cjs' : '.js' }),
};

export default defineConfig((overrides) => {
  // Cleaned here, once, rather than with tsup's `clean`: the two builds below run in
  // parallel, and `clean` on one of them deletes the other's files (its DTS step removes
  // every .d.ts under dist/).
  if (!overrides.watch) rmSync('dist', { recursive: true, force: true });
  return [
    {
      ...shared,
      entry: {
        index: 'src/index.ts',
        'transports/ws': 'src/transports/ws.ts',
        'auth/jwt': 'src/auth/jwt.ts',
        'backplanes/redis': 'src/backplanes/redis.ts',
      },
      platform: 'node',
      target: 'node20',
    },
    {
      ...shared,
      // The client runs in browsers, React Native and Node: no Node built-ins.
      entry: { 'client/index': 'src/client/index.ts' },
      platform: 'neutral',
      target: 'es2020',
    },
  ];
});
