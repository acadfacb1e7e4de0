import { defineConfig, type Options } from 'tsup';

const shared: Options = {
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  // Peer dependencies (ws, jose) and runtime dependencies stay external: nothing is bundled.
  skipNodeModulesBundle: true,
  outExtension: ({ format }) => ({ js: format === 'cjs' ? '.cjs' : '.js' }),
};

export default defineConfig([
  {
    ...shared,
    entry: {
      index: 'src/index.ts',
      'transports/ws': 'src/transports/ws.ts',
      'auth/jwt': 'src/auth/jwt.ts',
    },
    clean: true,
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
]);
