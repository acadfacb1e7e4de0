import { build, type Plugin } from 'esbuild';
import { isAbsolute, join, resolve } from 'node:path';
import { ROOT } from './ipc.js';

/** The child processes of the benchmark, by name. */
export const ENTRIES = {
  roomwire: 'bench/servers/roomwire.ts',
  'roomwire-redis': 'bench/servers/roomwire-redis.ts',
  bare: 'bench/servers/bare.ts',
  socketio: 'bench/servers/socketio.ts',
  preframed: 'bench/servers/preframed.ts',
  'bare-ack': 'bench/servers/bare-ack.ts',
  /** The roomwire server again, built from the `--base` source directory when one is given. */
  'roomwire-base': 'bench/servers/roomwire.ts',
  loadgen: 'bench/loadgen.ts',
} as const;

export type EntryName = keyof typeof ENTRIES;

/**
 * Where the bundles go: inside node_modules, so their imports of ws, socket.io, ioredis and zod
 * resolve as they do from the repository, and nothing lands in the work tree.
 */
export const BUILD_DIR = join(ROOT, 'node_modules/.cache/roomwire-bench');

/** The package's entry points, relative to a source directory. */
const SUBPATHS: Record<string, string> = {
  roomwire: 'index.ts',
  'roomwire/ws': 'transports/ws.ts',
  'roomwire/auth/jwt': 'auth/jwt.ts',
  'roomwire/redis': 'backplanes/redis.ts',
};

/** Resolves `roomwire` imports to another source directory (a worktree of a branch, a patched copy). */
function sourceFrom(dir: string): Plugin {
  const root = isAbsolute(dir) ? dir : resolve(ROOT, dir);
  return {
    name: 'roomwire-source',
    setup(on) {
      on.onResolve({ filter: /^roomwire(\/.*)?$/ }, (args) => {
        const file = SUBPATHS[args.path];
        return file === undefined ? undefined : { path: join(root, file) };
      });
    },
  };
}

/**
 * Bundles each child's entry with esbuild, the way a published build would be: roomwire
 * from src/ (through tsconfig's `paths`, as `import ... from 'roomwire'`), or from
 * `sourceDir` when given, every npm package left external, no minification. Running
 * TypeScript under tsx instead would charge every server for tsx's `keepNames` transform
 * (an `Object.defineProperty` for each named closure created, and closures left in
 * dictionary mode), which the shipped build does not have. `baseDir` builds the
 * `roomwire-base` server from that source directory instead, so two versions of roomwire
 * can be measured side by side in one run. Returns the path of each bundle.
 */
export async function buildEntries(sourceDir?: string, baseDir?: string): Promise<Record<EntryName, string>> {
  const options = {
    absWorkingDir: ROOT,
    outdir: BUILD_DIR,
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    packages: 'external',
    logLevel: 'warning',
  } as const;
  await build({ ...options, plugins: sourceDir === undefined ? [] : [sourceFrom(sourceDir)], entryPoints: ENTRIES });
  if (baseDir !== undefined) {
    await build({ ...options, plugins: [sourceFrom(baseDir)], entryPoints: { 'roomwire-base': ENTRIES['roomwire-base'] } });
  }
  const out = {} as Record<EntryName, string>;
  for (const name of Object.keys(ENTRIES) as EntryName[]) out[name] = join(BUILD_DIR, `${name}.js`);
  return out;
}
