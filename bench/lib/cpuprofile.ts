import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BUILD_DIR } from './build.js';
import { ROOT } from './ipc.js';

/** The parts of V8's .cpuprofile format this reads. */
interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  /** µs on the machine's monotonic clock, as process.hrtime. */
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Who a function belongs to. */
export type Category =
  | 'roomwire'
  | 'bench server'
  | 'ws'
  | 'socket.io'
  | 'zod'
  | 'eventemitter3'
  | 'node core'
  | 'V8 builtins'
  | 'socket I/O (native, mostly kernel)'
  | 'GC'
  | 'V8/native (program)'
  | 'idle'
  | 'other';

export interface ProfileRow {
  fn: string;
  /** File relative to the repository (or `node:…`), with the line in the transpiled module. */
  where: string;
  category: Category;
  ms: number;
  /** Share of the busy (non-idle) time. */
  pct: number;
}

export interface ProfileSummary {
  server: string;
  /** Whether only the samples of the measured window were counted. */
  windowed: boolean;
  sampledMs: number;
  busyMs: number;
  categories: { category: Category; ms: number; pct: number }[];
  /** Functions by self time. */
  self: ProfileRow[];
  /** roomwire functions by inclusive time (what they and their callees cost). */
  inclusive: ProfileRow[];
}

/** Node's stream bindings: each tries the syscall at once, so their time is mostly the kernel's. */
const SOCKET_IO_NATIVES = new Set(['writev', 'writeBuffer', 'writeUtf8String', 'writeLatin1String', 'writeAsciiString', 'writeUcs2String', 'readStart', 'readStop', 'shutdown', 'close']);

function categorize(url: string, fn: string, line = 0): Category {
  const bundled = bundledModule(url, line);
  if (bundled) return bundled.startsWith('src/') ? 'roomwire' : 'bench server';
  if (url === '') {
    if (fn === '(idle)') return 'idle';
    if (fn === '(garbage collector)') return 'GC';
    if (fn === '(program)') return 'V8/native (program)';
    if (SOCKET_IO_NATIVES.has(fn)) return 'socket I/O (native, mostly kernel)';
    return 'V8 builtins';
  }
  if (url.startsWith('node:')) return 'node core';
  if (url.includes('/node_modules/ws/')) return 'ws';
  if (url.includes('/node_modules/socket.io') || url.includes('/node_modules/engine.io') || url.includes('/node_modules/@socket.io/')) {
    return 'socket.io';
  }
  if (url.includes('/node_modules/zod/')) return 'zod';
  if (url.includes('/node_modules/eventemitter3/')) return 'eventemitter3';
  if (url.includes('/src/') && !url.includes('/node_modules/')) return 'roomwire';
  if (url.includes('/bench/')) return 'bench server';
  return 'other';
}

const bundleModules = new Map<string, { line: number; module: string }[]>();

/**
 * The source module of a line in one of the benchmark's esbuild bundles: esbuild heads
 * each bundled module with a `// src/room-manager.ts` comment.
 */
function bundledModule(url: string, line: number): string | undefined {
  if (!url.startsWith('file://') || !fileURLToPath(url).startsWith(BUILD_DIR)) return undefined;
  let heads = bundleModules.get(url);
  if (!heads) {
    heads = [];
    try {
      readFileSync(fileURLToPath(url), 'utf8')
        .split('\n')
        .forEach((text, index) => {
          const match = /^\/\/ ((?:src|bench)\/\S+\.[cm]?[jt]s)$/.exec(text);
          if (match?.[1]) heads?.push({ line: index, module: match[1] });
        });
    } catch {
      // Not readable: the bundle path stays as it is.
    }
    bundleModules.set(url, heads);
  }
  let found: string | undefined;
  for (const head of heads) {
    if (head.line > line) break;
    found = head.module;
  }
  return found;
}

function relative(url: string): string {
  const root = `file://${ROOT}`;
  return url.startsWith(root) ? url.slice(root.length) : url.replace(/^file:\/\/.*\/node_modules\//, 'node_modules/');
}

/**
 * Where a function is: the source module for the benchmark's bundles; no line for
 * TypeScript run under tsx (it transpiles into a few long lines); file and line for plain
 * .js files (node_modules).
 */
function location(url: string, line: number): string {
  if (url === '') return '';
  const bundled = bundledModule(url, line);
  if (bundled) return bundled;
  const file = relative(url);
  return file.endsWith('.ts') ? file : `${file}:${line + 1}`;
}

/**
 * Self and inclusive time per function of a .cpuprofile, by category. With `window`
 * (µs on the monotonic clock), only samples taken inside it count. Anonymous functions
 * are named after their nearest named caller.
 */
export function summarizeProfile(server: string, profile: CpuProfile, window?: { start: number; end: number }, top = 25): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const keyOf = (node: ProfileNode): string => `${node.callFrame.functionName}\u0000${node.callFrame.url}\u0000${node.callFrame.lineNumber}\u0000${node.callFrame.columnNumber}`;
  const nameOf = (node: ProfileNode): string => {
    if (node.callFrame.functionName) return node.callFrame.functionName;
    for (let id = parent.get(node.id); id !== undefined; id = parent.get(id)) {
      const caller = byId.get(id)?.callFrame.functionName;
      if (caller && !caller.startsWith('(')) return `(anonymous, called by ${caller})`;
    }
    return '(anonymous)';
  };
  const selfUs = new Map<string, number>();
  const inclusiveUs = new Map<string, number>();
  const info = new Map<string, { fn: string; where: string; category: Category }>();
  const categoryUs = new Map<Category, number>();
  let sampledUs = 0;
  let idleUs = 0;
  let at = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (window && (at < window.start || at > window.end)) continue;
    const node = byId.get(profile.samples[i] as number);
    if (!node || delta <= 0) continue;
    sampledUs += delta;
    const { functionName, url, lineNumber } = node.callFrame;
    const category = categorize(url, functionName, lineNumber);
    if (category === 'idle') {
      idleUs += delta;
      continue;
    }
    categoryUs.set(category, (categoryUs.get(category) ?? 0) + delta);
    const key = keyOf(node);
    selfUs.set(key, (selfUs.get(key) ?? 0) + delta);
    // Inclusive: every distinct function on the stack, once per sample (recursion counted once).
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const frame = byId.get(id);
      if (!frame) break;
      const k = keyOf(frame);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusiveUs.set(k, (inclusiveUs.get(k) ?? 0) + delta);
      if (!info.has(k)) {
        const { functionName: fn, url: u, lineNumber: line } = frame.callFrame;
        info.set(k, { fn: nameOf(frame), where: location(u, line), category: categorize(u, fn, line) });
      }
    }
    if (!info.has(key)) info.set(key, { fn: nameOf(node), where: location(url, lineNumber), category });
  }
  const busyUs = sampledUs - idleUs;
  const row = (key: string, us: number): ProfileRow => {
    const meta = info.get(key) ?? { fn: '?', where: '', category: 'other' as Category };
    return { ...meta, ms: us / 1000, pct: busyUs > 0 ? (100 * us) / busyUs : 0 };
  };
  return {
    server,
    windowed: window !== undefined,
    sampledMs: sampledUs / 1000,
    busyMs: busyUs / 1000,
    categories: [...categoryUs]
      .sort((a, b) => b[1] - a[1])
      .map(([category, us]) => ({ category, ms: us / 1000, pct: busyUs > 0 ? (100 * us) / busyUs : 0 })),
    self: [...selfUs]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([key, us]) => row(key, us)),
    inclusive: [...inclusiveUs]
      .filter(([key]) => info.get(key)?.category === 'roomwire')
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([key, us]) => row(key, us)),
  };
}
