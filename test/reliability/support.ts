import { createHook } from 'node:async_hooks';
import { readFileSync } from 'node:fs';
import { getHeapSnapshot, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { performance } from 'node:perf_hooks';
import WebSocket, { type ClientOptions } from 'ws';
import { ERROR_CODES } from '../../src/index.js';
import { TestClient, type Frame } from '../helpers/client.js';

/** Shared pieces of the reliability tests: clocks, seeds, garbage collection, leak probes. */

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A seed from the environment (to replay a failure) or the fixed default. */
export function seedFrom(name: string, fallback: number): number {
  const value = Number(process.env[name]);
  return Number.isInteger(value) ? value : fallback;
}

/** Mulberry32: a tiny seeded generator, so every random choice of a run can be replayed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Polls `predicate` every 10 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Connects a recording client with `ws` options of its own (`autoPong: false`, …) and waits for `welcome`. */
export async function connectWith(url: string, token: string, options: ClientOptions = {}): Promise<TestClient> {
  const ws = new WebSocket(`${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`, options);
  const client = new TestClient(ws);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.once('error', reject);
  });
  await client.next('welcome');
  return client;
}

/** The socket under a `ws` client, to pause reading as a phone that went to sleep does. */
export function rawSocket(client: TestClient): { pause(): void; resume(): void } {
  return (client.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
}

/** Frames of type `message` a client received, in order. */
export function messagesOf(client: TestClient): Frame[] {
  return client.of('message');
}

/**
 * The error codes docs/errors.md documents (its "Error frames" table), checked against
 * the library's own list: a fuzzed server may only ever answer with one of these.
 */
export function documentedErrorCodes(): Set<string> {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('## Error frames'), doc.indexOf('## Close codes'));
  const codes = new Set<string>();
  for (const match of section.matchAll(/^\| `([a-z_]+)` \|/gm)) codes.add(match[1]!);
  for (const code of codes) if (!ERROR_CODES.includes(code as (typeof ERROR_CODES)[number])) codes.delete(code);
  return codes;
}

/** Every frame type PROTOCOL.md lets a server send. */
export const SERVER_FRAME_TYPES = new Set(['welcome', 'message', 'joined', 'left', 'ack', 'resumed', 'presence', 'pong', 'error']);

// ---------------------------------------------------------------- memory

let gcFunction: (() => void) | undefined | null = null;

/**
 * A handle on V8's garbage collector. Vitest's workers do not run with --expose-gc; V8
 * lets the flag be set at run time, after which a fresh context exposes `gc`.
 */
export function garbageCollector(): (() => void) | undefined {
  if (gcFunction !== null) return gcFunction;
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === 'function') return (gcFunction = exposed);
  try {
    setFlagsFromString('--expose-gc');
    const fromContext = runInNewContext('gc') as unknown;
    gcFunction = typeof fromContext === 'function' ? (fromContext as () => void) : undefined;
  } catch {
    gcFunction = undefined;
  }
  return gcFunction;
}

/**
 * Heap in use after full collections (several, with turns of the event loop between, so
 * closed sockets' callbacks run and their objects become garbage). Without a collector it
 * is the raw `heapUsed`, and `collected` says so.
 */
export async function settledHeap(): Promise<{ bytes: number; collected: boolean }> {
  const gc = garbageCollector();
  for (let i = 0; i < 4; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    gc?.();
  }
  await sleep(20);
  gc?.();
  return { bytes: process.memoryUsage().heapUsed, collected: gc !== undefined };
}

export const MiB = 1024 * 1024;
export const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

/**
 * How many live heap objects have the constructor `name`, from a heap snapshot (after a
 * collection). For objects no public API counts, such as Node's internal `TimersList`.
 */
export async function countHeapObjects(name: string): Promise<number> {
  await settledHeap();
  const chunks: Buffer[] = [];
  for await (const chunk of getHeapSnapshot()) chunks.push(chunk as Buffer);
  const snapshot = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
    snapshot: { meta: { node_fields: string[] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snapshot.snapshot.meta.node_fields;
  const nameField = fields.indexOf('name');
  const target = snapshot.strings.indexOf(name);
  if (target === -1) return 0;
  let count = 0;
  for (let i = nameField; i < snapshot.nodes.length; i += fields.length) if (snapshot.nodes[i] === target) count++;
  return count;
}

// ---------------------------------------------------------------- timers

/**
 * Counts timers (`Timeout` resources, unref'd ones included, which
 * `process.getActiveResourcesInfo()` does not list) created while it runs and not yet
 * cleared or fired. A leaked timer stays in `alive`.
 */
export class TimerProbe {
  private readonly live = new Set<number>();
  created = 0;
  private readonly hook = createHook({
    init: (asyncId, type) => {
      if (type !== 'Timeout') return;
      this.created++;
      this.live.add(asyncId);
    },
    destroy: (asyncId) => {
      this.live.delete(asyncId);
    },
  });

  start(): this {
    this.hook.enable();
    return this;
  }

  stop(): void {
    this.hook.disable();
  }

  get alive(): number {
    return this.live.size;
  }
}

/** The ref'd timers Node reports as keeping the process alive. */
export function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((type) => type === 'Timeout').length;
}

/**
 * Measures how late timers fire while it runs (the event loop's lag on a busy machine),
 * so a timing bound can allow for what the machine itself added.
 */
export function lagMonitor(tickMs = 10): { stop(): number } {
  let worst = 0;
  let expected = performance.now() + tickMs;
  let timer: ReturnType<typeof setTimeout>;
  const tick = (): void => {
    const now = performance.now();
    worst = Math.max(worst, now - expected);
    expected = now + tickMs;
    timer = setTimeout(tick, tickMs);
  };
  timer = setTimeout(tick, tickMs);
  return {
    stop() {
      clearTimeout(timer);
      return worst;
    },
  };
}

/** One line of measured figures, printed so docs/reliability.md can quote a real run. */
export function report(test: string, figures: Record<string, unknown>): void {
  console.log(`[reliability] ${test}: ${JSON.stringify(figures)}`);
}
