/**
 * Every code example a user may copy must compile against the current source.
 *
 * Checked, as TypeScript modules:
 * - every fenced ```ts block inside a TSDoc `@example` tag of src/**\/*.ts (all of them:
 *   an `@example` without a ```ts block fails, so none escapes the check);
 * - every fenced ```ts block of README.md and docs/*.md that imports from `roomwire` (or
 *   one of its subpaths): those are complete programs. Blocks without such an import are
 *   fragments that continue an earlier block (`await rooms.broadcast(...)`) and are skipped.
 *
 * A snippet may set up its context with `declare const db: Db;`. Each snippet is its own
 * module (top-level await allowed); `roomwire`, `roomwire/ws`, `roomwire/auth/jwt` and
 * `roomwire/client` resolve to src/ through the tsconfig `paths`. All snippets go into one
 * program, so the source is checked once.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

interface Snippet {
  /** Where it comes from, e.g. `src/errors.ts:37`, for the test name and messages. */
  readonly origin: string;
  /** The file and line (1-based) of the snippet's first code line. */
  readonly file: string;
  readonly line: number;
  readonly code: string;
}

const FENCE_OPEN = /^\s*```(ts|typescript)\s*$/;
const FENCE_ANY = /^\s*```/;
const IMPORTS_ROOMWIRE = /\bfrom\s+['"]roomwire(\/[\w/-]+)?['"]/;

function listFiles(dir: string, keep: (name: string) => boolean): string[] {
  return readdirSync(join(root, dir), { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && keep(entry.name))
    .map((entry) => relative(root, join(entry.parentPath, entry.name)).split(sep).join('/'))
    .sort();
}

/** The ```ts blocks of `lines`, as [index of the first code line, code]. */
function fencedBlocks(lines: readonly string[], from = 0, to = lines.length): [number, string][] {
  const blocks: [number, string][] = [];
  for (let i = from; i < to; i++) {
    if (!FENCE_OPEN.test(lines[i] ?? '')) {
      // Skip over blocks in other languages so their contents are not taken for fences.
      if (FENCE_ANY.test(lines[i] ?? '')) {
        for (i++; i < to && !FENCE_ANY.test(lines[i] ?? ''); i++);
      }
      continue;
    }
    const start = i + 1;
    for (i = start; i < to && !FENCE_ANY.test(lines[i] ?? ''); i++);
    blocks.push([start, lines.slice(start, i).join('\n')]);
  }
  return blocks;
}

/** `@example` blocks of the TSDoc comments of one source file. */
function tsdocSnippets(file: string, missing: string[]): Snippet[] {
  const text = readFileSync(join(root, file), 'utf8');
  const snippets: Snippet[] = [];
  for (const match of text.matchAll(/\/\*\*[\s\S]*?\*\//g)) {
    const firstLine = text.slice(0, match.index).split('\n').length;
    // One comment line per source line, with the leading ` * ` taken off.
    const lines = match[0].split('\n').map((line) => line.replace(/^\s*(\/\*\*|\*\/|\*(?!\/) ?)/, '').replace(/\*\/\s*$/, ''));
    for (let i = 0; i < lines.length; i++) {
      if (!/^@example\b/.test(lines[i] ?? '')) continue;
      // The tag runs until the next block tag outside a fence.
      let end = i + 1;
      for (let inFence = false; end < lines.length; end++) {
        const line = lines[end] ?? '';
        if (FENCE_ANY.test(line)) inFence = !inFence;
        else if (!inFence && /^@\w/.test(line)) break;
      }
      const blocks = fencedBlocks(lines, i + 1, end);
      if (blocks.length === 0) missing.push(`${file}:${firstLine + i}`);
      for (const [start, code] of blocks) {
        snippets.push({ origin: `${file}:${firstLine + start}`, file, line: firstLine + start, code });
      }
      i = end - 1;
    }
  }
  return snippets;
}

/** The ```ts blocks of a Markdown file that import from roomwire. */
function markdownSnippets(file: string): Snippet[] {
  const lines = readFileSync(join(root, file), 'utf8').split('\n');
  return fencedBlocks(lines)
    .filter(([, code]) => IMPORTS_ROOMWIRE.test(code))
    .map(([start, code]) => ({ origin: `${file}:${start + 1}`, file, line: start + 1, code }));
}

const missingFences: string[] = [];
const snippets: Snippet[] = [
  ...listFiles('src', (name) => name.endsWith('.ts') && !name.endsWith('.d.ts')).flatMap((file) => tsdocSnippets(file, missingFences)),
  ...['README.md', ...listFiles('docs', (name) => name.endsWith('.md'))]
    .filter((file) => !file.startsWith('docs/api/'))
    .flatMap(markdownSnippets),
];

/** Where snippet `index` lives in the program: a file that exists only in memory, inside the repository so it resolves like test code. */
const virtualPath = (index: number): string => join(root, '.examples', `snippet-${index}.ts`).split(sep).join('/');

describe('code examples compile', () => {
  const diagnosticsBySnippet = new Map<string, string[]>();

  beforeAll(() => {
    const config = ts.getParsedCommandLineOfConfigFile(join(root, 'tsconfig.json'), {}, {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
        throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'));
      },
    });
    if (!config) throw new Error('tsconfig.json could not be read');
    const sources = new Map<string, string>();
    // `export {}` keeps every snippet a module of its own, so their `declare const`s do not collide.
    snippets.forEach((snippet, index) => sources.set(virtualPath(index), `${snippet.code}\nexport {};\n`));

    const options: ts.CompilerOptions = { ...config.options, noEmit: true, incremental: false };
    const host = ts.createCompilerHost(options, true);
    const { fileExists, readFile, getSourceFile } = host;
    host.fileExists = (name) => sources.has(name) || fileExists.call(host, name);
    host.readFile = (name) => sources.get(name) ?? readFile.call(host, name);
    host.getSourceFile = (name, languageVersion, onError, shouldCreate) => {
      const text = sources.get(name);
      return text === undefined
        ? getSourceFile.call(host, name, languageVersion, onError, shouldCreate)
        : ts.createSourceFile(name, text, languageVersion, true);
    };
    const program = ts.createProgram({ rootNames: [...sources.keys()], options, host });

    snippets.forEach((snippet, index) => {
      const source = program.getSourceFile(virtualPath(index));
      if (!source) throw new Error(`snippet ${snippet.origin} is missing from the program`);
      const diagnostics = [...program.getSyntacticDiagnostics(source), ...program.getSemanticDiagnostics(source)];
      diagnosticsBySnippet.set(
        snippet.origin,
        diagnostics.map((diagnostic) => {
          const line = diagnostic.start === undefined ? 0 : source.getLineAndCharacterOfPosition(diagnostic.start).line;
          return `${snippet.file}:${snippet.line + line}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')}`;
        }),
      );
    });
  }, 60_000);

  it('finds the examples, and every @example has a ```ts block', () => {
    expect(missingFences, 'an @example without a ```ts block is never checked').toEqual([]);
    // A change in comment style that hid every example would otherwise pass silently.
    expect(snippets.filter((snippet) => snippet.file.startsWith('src/')).length).toBeGreaterThanOrEqual(5);
    expect(snippets.some((snippet) => snippet.file === 'README.md')).toBe(true);
  });

  it.each(snippets.map((snippet) => [snippet.origin]))('%s', (origin) => {
    expect(diagnosticsBySnippet.get(origin)).toEqual([]);
  });
});
