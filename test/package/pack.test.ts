/**
 * The package as users get it: build, `npm pack`, install the tarball into a fresh project
 * next to the peer dependencies, then use every subpath from ESM, CommonJS and TypeScript
 * (`node16` and `bundler` resolution).
 *
 * The install runs with `--offline`: every package it needs (the tarball's dependencies,
 * the peers `ws` and `jose`, `@types/ws` and `@types/node`) is pinned to the version in
 * this repository's node_modules, which `npm ci` has put into the npm cache. Only when the
 * cache lacks one does it fall back to `--prefer-offline`, which may use the network.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, posix, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const require = createRequire(import.meta.url);
const tsc = require.resolve('typescript/bin/tsc');

/** Runs a command; rejects with its output when it fails or outlives `timeoutMs`. */
function run(command: string, args: readonly string[], cwd: string, timeoutMs = 60_000): Promise<string> {
  return new Promise((done, fail) => {
    execFile(command, args, { cwd, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) fail(new Error(`${command} ${args.join(' ')} failed (${error.message.split('\n')[0]}):\n${stdout}\n${stderr}`));
      else done(stdout);
    });
  });
}

/** `name@version` as installed in this repository, so the offline install finds it in the cache. */
function pinned(name: string): string {
  const manifest = JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string };
  return `${name}@${manifest.version}`;
}

// The same checks from ESM and CommonJS: every subpath's exports, the error classes shared
// between subpaths (not a copy per subpath), and one message through a real server and client.
const RUNTIME_CHECK = `
  const fail = (message) => { throw new Error(message); };
  const exported = {
    RoomManager: core.RoomManager, InMemoryHistoryStore: core.InMemoryHistoryStore,
    HandshakeError: core.HandshakeError, RoomwireError: core.RoomwireError, OptionsError: core.OptionsError,
    isHandshakeError: core.isHandshakeError, isRoomwireError: core.isRoomwireError,
    decodeClientFrame: core.decodeClientFrame, encodeServerFrame: core.encodeServerFrame,
    attachWebSocket: wsAdapter.attachWebSocket,
    jwtAuthenticator: jwt.jwtAuthenticator, extractToken: jwt.extractToken,
    connect: client.connect, ClientError: client.ClientError, isClientError: client.isClientError,
  };
  for (const [name, value] of Object.entries(exported)) {
    if (typeof value !== 'function') fail(name + ' is ' + typeof value);
  }
  if (core.SUBPROTOCOL !== 'roomwire.v1') fail('SUBPROTOCOL is ' + core.SUBPROTOCOL);

  const secret = 'pack-test-secret';
  const authenticate = jwt.jwtAuthenticator({ secret });
  const refused = await authenticate({ url: '/ws', headers: {} }).then(() => undefined, (error) => error);
  if (!(refused instanceof core.HandshakeError)) fail('roomwire/auth/jwt threw another copy of HandshakeError');

  const rooms = new core.RoomManager({ authenticate, membership: { roomsOf: () => ['lobby'], membersOf: () => ['alice'] } });
  const server = http.createServer();
  const adapter = wsAdapter.attachWebSocket(rooms, { server, path: '/ws' });
  await new Promise((listening) => server.listen(0, '127.0.0.1', listening));
  const token = await new jose.SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('alice')
    .setExpirationTime('5m').sign(new TextEncoder().encode(secret));
  const user = client.connect({ url: 'ws://127.0.0.1:' + server.address().port + '/ws', token, WebSocket: WebSocketClass });
  const welcome = await new Promise((welcomed) => user.on('welcome', welcomed));
  const ack = await user.publish('lobby', { text: 'hi' });
  user.close();
  await rooms.close();
  await adapter.close();
  server.close();
  console.log(JSON.stringify({ rooms: welcome.rooms, seq: ack.seq }));
`;

const ESM_CHECK = `
import http from 'node:http';
import * as jose from 'jose';
import WebSocketClass from 'ws';
import * as core from 'roomwire';
import * as wsAdapter from 'roomwire/ws';
import * as jwt from 'roomwire/auth/jwt';
import * as client from 'roomwire/client';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 20_000).unref();
${RUNTIME_CHECK}
`;

const CJS_CHECK = `
const http = require('node:http');
const jose = require('jose');
const WebSocketClass = require('ws');
const core = require('roomwire');
const wsAdapter = require('roomwire/ws');
const jwt = require('roomwire/auth/jwt');
const client = require('roomwire/client');
setTimeout(() => { console.error('timed out'); process.exit(1); }, 20_000).unref();
(async () => {
${RUNTIME_CHECK}
})().catch((error) => { console.error(error); process.exit(1); });
`;

// Compiled as ESM (check.ts: the project is "type": "module") and, under node16, as
// CommonJS (check.cts), so both the `import` and the `require` condition's types are used.
// `IsAny` catches types that silently degraded to `any`.
const TYPES_CHECK = `
import type { Server } from 'node:http';
import { HandshakeError, RoomManager, isHandshakeError, type DeliveryReport, type MembershipLoader } from 'roomwire';
import { attachWebSocket, type WebSocketAdapter } from 'roomwire/ws';
import { jwtAuthenticator, type JwtAuthenticatorOptions } from 'roomwire/auth/jwt';
import { ClientError, connect, type RoomwireClient } from 'roomwire/client';

type IsAny<T> = 0 extends 1 & T ? true : false;
export const notAny: [
  IsAny<typeof RoomManager>,
  IsAny<typeof attachWebSocket>,
  IsAny<typeof jwtAuthenticator>,
  IsAny<typeof connect>,
  IsAny<DeliveryReport>,
  // Types the package takes from its peers: jose's key getter, ws's WebSocket.
  IsAny<NonNullable<JwtAuthenticatorOptions['key']>>,
  IsAny<WebSocketAdapter['clients'] extends ReadonlySet<infer Socket> ? Socket : never>,
] = [false, false, false, false, false, false, false];

declare const server: Server;
const membership: MembershipLoader = { roomsOf: () => ['lobby'], membersOf: () => ['alice'] };
const rooms = new RoomManager({ authenticate: jwtAuthenticator({ secret: 'secret' }), membership });
export const adapter: WebSocketAdapter = attachWebSocket(rooms, { server, path: '/ws' });
export const user: RoomwireClient = connect({ url: 'ws://localhost/ws', token: () => 'token' });
export const report: Promise<DeliveryReport> = rooms.broadcast('lobby', { text: 'hi' });
export const seq: Promise<number> = user.publish('lobby', { text: 'hi' }).then((ack) => ack.seq);
export const checks: boolean[] = [isHandshakeError(HandshakeError.forbidden()), new ClientError('timeout', 'late') instanceof Error];
`;

function tsconfig(module: string, moduleResolution: string, files: string[]): string {
  return JSON.stringify({
    compilerOptions: {
      module,
      moduleResolution,
      target: 'ES2022',
      lib: ['ES2022'],
      types: ['node'],
      strict: true,
      exactOptionalPropertyTypes: true,
      skipLibCheck: true,
      noEmit: true,
    },
    files,
  });
}

describe('the packed package', () => {
  let temp = '';
  let project = '';
  let packed: string[] = [];

  beforeAll(async () => {
    temp = mkdtempSync(join(tmpdir(), 'roomwire-pack-'));
    project = join(temp, 'project');
    await run('npm', ['run', 'build'], root, 90_000);
    // Scripts are skipped: the build above is what gets packed (prepack would build again).
    const [pack] = JSON.parse(
      await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', temp], root),
    ) as [{ filename: string; files: { path: string }[] }];
    packed = pack.files.map((file) => file.path);

    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'roomwire-pack-test', private: true, type: 'module' }));
    const install = [
      'install',
      '--no-audit',
      '--no-fund',
      '--ignore-scripts',
      '--loglevel=error',
      join(temp, pack.filename),
      ...['ws', 'jose', '@types/ws', '@types/node'].map(pinned),
    ];
    try {
      await run('npm', [...install, '--offline'], project, 60_000);
    } catch (offline) {
      // The npm cache lacks something: allow the network for it.
      try {
        await run('npm', [...install, '--prefer-offline'], project, 90_000);
      } catch (online) {
        throw new Error(`${(offline as Error).message}\n\n${(online as Error).message}`);
      }
    }
    writeFileSync(join(project, 'check.mjs'), ESM_CHECK);
    writeFileSync(join(project, 'check.cjs'), CJS_CHECK);
    writeFileSync(join(project, 'check.ts'), TYPES_CHECK);
    writeFileSync(join(project, 'check.cts'), TYPES_CHECK);
    // skipLibCheck as most projects set it; `IsAny` catches a type that failed to resolve, and
    // the package's own .d.ts files are checked by the last test.
    writeFileSync(join(project, 'tsconfig.node16.json'), tsconfig('node16', 'node16', ['check.ts', 'check.cts']));
    writeFileSync(join(project, 'tsconfig.bundler.json'), tsconfig('ESNext', 'bundler', ['check.ts']));
  }, 180_000);

  afterAll(() => {
    if (temp) rmSync(temp, { recursive: true, force: true });
  });

  it('ships the build, the README and the CHANGELOG, nothing else', () => {
    const outside = packed.filter((path) => !path.startsWith('dist/') && !/^(package\.json|README\.md|CHANGELOG\.md|LICENSE)$/.test(path));
    expect(outside).toEqual([]);
    for (const entry of ['index', 'transports/ws', 'auth/jwt', 'backplanes/redis', 'client/index']) {
      for (const extension of ['.js', '.cjs', '.d.ts', '.d.cts']) expect(packed).toContain(`dist/${entry}${extension}`);
    }
  });

  it('has source maps that name no path of the machine that built it', () => {
    const maps = packed.filter((path) => path.endsWith('.map'));
    expect(maps.length).toBeGreaterThan(0);
    const problems: string[] = [];
    for (const path of maps) {
      const map = JSON.parse(readFileSync(join(root, path), 'utf8')) as { file?: string; sources: string[]; sourcesContent?: (string | null)[] };
      if (map.file !== undefined && (isAbsolute(map.file) || map.file.includes('/'))) problems.push(`${path}: file ${map.file}`);
      map.sources.forEach((source, index) => {
        if (isAbsolute(source)) problems.push(`${path}: source ${source}`);
        // A source without its content must be a file the package ships.
        const shipped = packed.includes(posix.join(posix.dirname(path), source));
        if (!shipped && typeof map.sourcesContent?.[index] !== 'string') problems.push(`${path}: ${source} is neither shipped nor embedded`);
      });
    }
    expect(problems).toEqual([]);
  });

  it('works from ESM', async () => {
    const output = await run(process.execPath, ['check.mjs'], project, 30_000);
    expect(JSON.parse(output)).toEqual({ rooms: ['lobby'], seq: 1 });
  }, 40_000);

  it('works from CommonJS', async () => {
    const output = await run(process.execPath, ['check.cjs'], project, 30_000);
    expect(JSON.parse(output)).toEqual({ rooms: ['lobby'], seq: 1 });
  }, 40_000);

  it('typechecks with moduleResolution node16 (ESM and CommonJS)', async () => {
    await expect(run(process.execPath, [tsc, '-p', 'tsconfig.node16.json'], project, 60_000)).resolves.toBe('');
  }, 70_000);

  it('typechecks with moduleResolution bundler', async () => {
    await expect(run(process.execPath, [tsc, '-p', 'tsconfig.bundler.json'], project, 60_000)).resolves.toBe('');
  }, 70_000);

  it('has declaration files without type errors', () => {
    // Only the package's own files are checked: checking all of node_modules (skipLibCheck
    // false) would cost four times as long. nodenext, because under node16 a CommonJS file
    // may not import an ES module, and jose 6 is one: auth/jwt.d.cts imports its types, which
    // node16 would report there (skipLibCheck hides it; nodenext, like Node 20.19+, allows it).
    const dist = join(project, 'node_modules', 'roomwire', 'dist');
    const declarations = packed
      .filter((path) => /\.d\.c?ts$/.test(path))
      .map((path) => join(project, 'node_modules', 'roomwire', path));
    const program = ts.createProgram(declarations, {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      lib: ['lib.es2022.d.ts'],
      types: ['node'],
      typeRoots: [join(project, 'node_modules', '@types')],
      strict: true,
      noEmit: true,
    });
    const errors = program
      .getSourceFiles()
      .filter((file) => file.fileName.startsWith(dist.split(sep).join('/')))
      .flatMap((file) => [...program.getSyntacticDiagnostics(file), ...program.getSemanticDiagnostics(file)])
      .map((diagnostic) => `${diagnostic.file?.fileName ?? ''}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')}`);
    expect(errors).toEqual([]);
  }, 60_000);
});
