import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PUBLIC = new URL('./public/', import.meta.url);

/** A file the page needs, served as it is. */
export interface PageAsset {
  path: string;
  contentType: string;
  /** The file's text; rejects when it cannot be produced. */
  load(): Promise<string>;
}

let clientBundle: Promise<string> | undefined;

/**
 * The roomwire client as one browser ES module, bundled once per process by esbuild so
 * the page needs no build step. `roomwire/client` resolves like in any project: here the
 * tsconfig `paths` point it at the repository's source; in an app that installed
 * roomwire it is the package's own build. A failed bundle is not kept, so the next
 * request tries again.
 */
export function bundleClient(): Promise<string> {
  clientBundle ??= build({
    stdin: { contents: "export * from 'roomwire/client';", resolveDir: ROOT, loader: 'ts', sourcefile: 'roomwire-client.ts' },
    tsconfig: join(ROOT, 'tsconfig.json'),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    write: false,
    logLevel: 'silent',
    legalComments: 'none',
  }).then(
    (result) => result.outputFiles[0]?.text ?? '',
    (error: unknown) => {
      clientBundle = undefined;
      throw error;
    },
  );
  return clientBundle;
}

const publicFile = (name: string) => () => readFile(new URL(name, PUBLIC), 'utf8');

/** The page (`GET /`), its script, and the bundled roomwire client. */
export const PAGE_ASSETS: readonly PageAsset[] = [
  { path: '/', contentType: 'text/html; charset=utf-8', load: publicFile('index.html') },
  { path: '/assets/chat.js', contentType: 'text/javascript; charset=utf-8', load: publicFile('chat.js') },
  { path: '/assets/roomwire-client.js', contentType: 'text/javascript; charset=utf-8', load: bundleClient },
];
