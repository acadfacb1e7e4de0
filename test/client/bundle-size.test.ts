import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';

const ENTRY = fileURLToPath(new URL('../../src/client/index.ts', import.meta.url));

describe('roomwire/client bundle', () => {
  it('is under 5 KB minified and gzipped, with no Node built-in and no dependency', async () => {
    const result = await build({
      entryPoints: [ENTRY],
      bundle: true,
      minify: true,
      format: 'esm',
      // Neutral: a node: import or a package import would fail to resolve or stay external.
      platform: 'neutral',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const code = result.outputFiles[0]!.contents;
    const gzipped = gzipSync(code).byteLength;
    expect(gzipped).toBeLessThan(5_120);
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs.filter((path) => !/^src\/(client\/|protocol\/limits\.ts$)/.test(path))).toEqual([]);
    const imports = result.metafile.outputs[Object.keys(result.metafile.outputs)[0]!]!.imports;
    expect(imports).toEqual([]);
  });
});
