import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    'transports/ws': 'src/transports/ws.ts',
    'auth/jwt': 'src/auth/jwt.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  // Peer dependencies (ws, jose) and runtime dependencies stay external: nothing is bundled.
  skipNodeModulesBundle: true,
  outExtension: ({ format }) => ({ js: format === 'cjs' ? '.cjs' : '.js' }),
});
