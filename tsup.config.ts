import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative } from 'node:path';
import { defineConfig, type Options } from 'tsup';

/**
 * tsup turns the split ESM build into CommonJS with sucrase, whose source map names the
 * output file by its absolute path (as `file` and as a source of the lines it added). The
 * maps ship in the package, so each such path becomes relative to the map: the same file,
 * without the build machine's directories.
 */
function relativeSourceMaps(dir: string, skip?: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (path === skip) continue;
    if (entry.isDirectory()) relativeSourceMaps(path);
    else if (entry.name.endsWith('.map')) {
      const map = JSON.parse(readFileSync(path, 'utf8')) as { file?: string; sources: string[] };
      if (!map.sources.some(isAbsolute) && !(map.file && isAbsolute(map.file))) continue;
      if (map.file) map.file = basename(map.file);
      map.sources = map.sources.map((source) => (isAbsolute(source) ? relative(dirname(path), source) : source));
      writeFileSync(path, JSON.stringify(map));
    }
  }
}

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
      // The client's build below fixes its own maps: the two builds run in parallel.
      onSuccess: async () => relativeSourceMaps('dist', join('dist', 'client')),
    },
    {
      ...shared,
      // The client runs in browsers, React Native and Node: no Node built-ins.
      entry: { 'client/index': 'src/client/index.ts' },
      platform: 'neutral',
      target: 'es2020',
      onSuccess: async () => relativeSourceMaps(join('dist', 'client')),
    },
  ];
});
