/**
 * The load generator: one process, the same code for every server. Plain `ws` clients
 * speak each server's framing by hand (roomwire's JSON frames, which the bare server
 * shares, or Engine.IO v4 / Socket.IO v5 text packets), so what the client costs is the
 * same whoever serves it. Receiving only scans the frame for two integers (the step and
 * the send time), never parses it.
 *
 * Connections may be spread over several server processes (the cluster scenario):
 * connection `i` goes to the `i mod N`-th port, so every room spans every process.
 *
 * Driven by bench/run.ts over IPC: `connect`, `run`, `close`.
 */
import { PerformanceObserver, constants as perfConstants, performance, type PerformanceEntry } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import WebSocket from 'ws';
import { reportEvent, serveRequests } from './lib/ipc.js';
import { PerfRecording, type PerfSplit } from './lib/perf.js';
import { startCounting, stopCounting } from './lib/callgrind.js';
import { cpuDelta, machineDelta, openFilesLimit, readMachineCpu, readMainThreadCpu, readProcessCpu, readRuntimeMs, type CpuTimes, type MachineTimes } from './lib/proc.js';
import { closeProbeClient, openProbeClient, redisWindow, snapshotRedis, type RedisSnapshot, type RedisWindow } from './lib/redis.js';
import { roomCount, roomName, userName, type Topology } from './lib/topology.js';

/**
 * The servers; `preframed` and `bare-ack` are optional variants of the bare loop, and
 * `roomwire-base` roomwire built from another source directory (`--base=DIR`), none of
 * them in the default run.
 */
export type ServerKind = 'roomwire' | 'bare' | 'socketio' | 'preframed' | 'bare-ack' | 'roomwire-base';

export interface ConnectRequest {
  cmd: 'connect';
  kind: ServerKind;
  /** The servers' ports: connection `i` goes to `ports[i mod ports.length]`. */
  ports: number[];
  topology: Topology;
  /** Connection indexes [from, to) to open; a later call adds more. */
  from: number;
  to: number;
  concurrency: number;
  timeoutMs: number;
}

export interface ConnectResult {
  connected: number;
  failed: number;
  ms: number;
  firstError: string | undefined;
  fdLimit: number | null;
}

export interface RunRequest {
  cmd: 'run';
  /** Publishes per second over all rooms. */
  rate: number;
  warmupMs: number;
  measureMs: number;
  /** Longest wait after the last publish for the deliveries still in flight. */
  drainMs: number;
  /** A number > 0 carried in each measured message, so late ones of another step are not counted. */
  step: number;
  /** The server processes, whose CPU counters are read around the window and summed. */
  serverPids: number[];
  /** Redis to read around the window (the cluster scenario); its figures come back as `redis`. */
  redis?: RedisProbe | undefined;
  /**
   * Sample the servers with Linux perf over the window: `split` to split their CPU time
   * into user and kernel time by the samples, `callgraph` to also keep the recordings
   * (with call chains) for the runner to sort; without it, /proc's own split is used.
   */
  perf?: 'split' | 'callgraph' | undefined;
  /** The servers run under callgrind: count their instructions over exactly the window (bench/lib/callgrind.ts). */
  callgrind?: boolean | undefined;
}

/** Where the Redis counters of a window come from. */
export interface RedisProbe {
  url: string;
  /** The redis-server process, for its CPU from /proc; null when not readable. */
  pid: number | null;
  /** The seq counters of the run's rooms: their growth counts the window's publishes on the Redis side. */
  seqKeys: string[];
}

export interface RunResult {
  rate: number;
  sent: number;
  /** Publishes per second actually sent (below `rate` when the load generator fell behind). */
  sentRate: number;
  expected: number;
  received: number;
  lost: number;
  /** Frames of another step that arrived late. */
  stale: number;
  acks: number;
  errors: number;
  firstError: string | undefined;
  /** Connections the server closed while the step ran. */
  dropped: number;
  /** Send phase, ms. */
  sendMs: number;
  /** Send phase plus the drain: the window the CPU counters cover. */
  windowMs: number;
  /** The same window on the machine's monotonic clock (process.hrtime), µs: the clock of V8's CPU profiles. */
  windowUs: { start: number; end: number };
  drained: boolean;
  latency: { count: number; p50Ms: number; p90Ms: number; p99Ms: number; maxMs: number };
  /**
   * All server processes together. The total is /proc's (utime + stime, which the kernel
   * keeps equal to the time the threads actually ran); the split into user and system
   * time is perf's when `split` is `perf`, else /proc's.
   */
  server: CpuTimes;
  /** Their main threads alone (the event loops); the rest is V8's and libuv's helper threads. */
  serverMainThread: CpuTimes;
  /** Each server process, in the order of `serverPids`, split as `server`. */
  servers: CpuTimes[];
  /** Where the user/system split of `server` comes from. */
  split: 'perf' | 'proc';
  /** The same window split as /proc has it: by the kernel's timer ticks, 250 or so a second. */
  serverProc: CpuTimes;
  /** perf's samples of each server (in `serverPids` order) in the window; null without perf. */
  perfSplits: PerfSplit[] | null;
  /** The recordings with call chains (`perf: 'callgraph'`), for the runner to sort and remove. */
  perfFiles: string[];
  loadgen: CpuTimes;
  machine: MachineTimes;
  /** Redis over the same window, when the request asked for it and it answered. */
  redis: RedisWindow | null;
  /** Why `redis` is null although the request asked for it. */
  redisError: string | undefined;
  /** The load generator's own garbage collections in the window: its pauses delay every frame it reads meanwhile. */
  loadgenGc: LoadgenGc;
}

export interface LoadgenGc {
  count: number;
  /** Of which mark-compacts (full collections). */
  major: number;
  totalMs: number;
  maxMs: number;
}

interface Client {
  readonly ws: WebSocket;
  readonly index: number;
  readonly room: number;
  ready: boolean;
}

const PAD = 'the quick brown fox jumps over the lazy dog 0123';
const MSG_JSON = Buffer.from('{"type":"message"');
const ACK_JSON = Buffer.from('{"type":"ack"');
const WELCOME_JSON = Buffer.from('{"type":"welcome"');
const ERROR_JSON = Buffer.from('{"type":"error"');
const MSG_SIO = Buffer.from('42["message"');
const KEY_K = Buffer.from('"k":');
const KEY_T = Buffer.from('"t":');
const LATENCY_CAP = 2_000_000;

let kind: ServerKind = 'roomwire';
let topology: Topology = { connections: 0, roomSize: 1 };
let clients: Client[] = [];
/** Ready clients per room: publishers and recipients. */
let byRoom: Client[][] = [];
let closing = false;

let currentStep = -1;
let received = 0;
let stale = 0;
let acks = 0;
let errors = 0;
let dropped = 0;
let firstError: string | undefined;
const latencies = new Float64Array(LATENCY_CAP);
let latencyCount = 0;

/** This process's garbage collections since the last `gcSince` (bounded: a window holds a few dozen). */
const collections: PerformanceEntry[] = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) if (collections.length < 10_000) collections.push(entry);
}).observe({ entryTypes: ['gc'] });

/** The collections that started in [from, to] (performance.now() times), and forgets them all. */
async function gcBetween(from: number, to: number): Promise<LoadgenGc> {
  // The observer is told of a collection a little after it ends.
  await sleep(20);
  const gc: LoadgenGc = { count: 0, major: 0, totalMs: 0, maxMs: 0 };
  for (const entry of collections.splice(0)) {
    if (entry.startTime < from || entry.startTime > to) continue;
    gc.count++;
    if ((entry as { detail?: { kind?: number } }).detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) gc.major++;
    gc.totalMs += entry.duration;
    gc.maxMs = Math.max(gc.maxMs, entry.duration);
  }
  return gc;
}

function startsWith(data: Buffer, prefix: Buffer): boolean {
  return data.length >= prefix.length && data.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

/** The non-negative integer after `key`, or -1. */
function readInt(data: Buffer, key: Buffer): number {
  const at = data.indexOf(key);
  if (at === -1) return -1;
  let value = 0;
  let digits = 0;
  for (let i = at + key.length; i < data.length; i++) {
    const c = data[i] as number;
    if (c < 48 || c > 57) break;
    value = value * 10 + (c - 48);
    digits++;
  }
  return digits === 0 ? -1 : value;
}

function nowUs(): number {
  return Math.round(performance.now() * 1000);
}

function record(data: Buffer): void {
  if (readInt(data, KEY_K) !== currentStep) {
    stale++;
    return;
  }
  received++;
  const sentAt = readInt(data, KEY_T);
  if (latencyCount < LATENCY_CAP) latencies[latencyCount++] = nowUs() - sentAt;
}

function noteError(data: Buffer): void {
  errors++;
  firstError ??= data.toString('utf8', 0, Math.min(data.length, 200));
}

function onFrame(client: Client, data: Buffer, markReady: () => void): void {
  if (kind === 'socketio') {
    if (startsWith(data, MSG_SIO)) return record(data);
    const c0 = data[0];
    if (data.length === 1 && c0 === 0x32) return client.ws.send('3'); // Engine.IO ping -> pong
    if (c0 === 0x30) return client.ws.send('40'); // Engine.IO open -> Socket.IO connect
    if (c0 === 0x34 && data[1] === 0x30) return markReady(); // Socket.IO connect ack
    if (c0 === 0x34 && data[1] === 0x34) return noteError(data); // connect_error
    return;
  }
  if (startsWith(data, MSG_JSON)) return record(data);
  if (startsWith(data, ACK_JSON)) {
    acks++;
    return;
  }
  if (startsWith(data, WELCOME_JSON)) return markReady();
  if (startsWith(data, ERROR_JSON)) noteError(data);
}

function urlFor(ports: readonly number[], index: number): string {
  const user = userName(index);
  const port = ports[index % ports.length] as number;
  return kind === 'socketio'
    ? `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket&user=${user}`
    : `ws://127.0.0.1:${port}/?user=${user}`;
}

function connect(request: ConnectRequest): Promise<ConnectResult> {
  if (clients.length === 0) {
    kind = request.kind;
    topology = request.topology;
    byRoom = Array.from({ length: roomCount(topology) }, () => []);
    closing = false;
  }
  const started = performance.now();
  const deadline = Date.now() + request.timeoutMs;
  let next = request.from;
  let active = 0;
  let connected = 0;
  let failed = 0;
  let error: string | undefined;
  return new Promise((resolve) => {
    const finish = (): void =>
      resolve({ connected, failed, ms: performance.now() - started, firstError: error, fdLimit: openFilesLimit() });
    const launch = (): void => {
      while (active < request.concurrency && next < request.to) {
        if (Date.now() > deadline) {
          failed += request.to - next;
          error ??= 'connect phase timed out';
          next = request.to;
          break;
        }
        open(next++);
      }
      if (active === 0 && next >= request.to) finish();
    };
    const open = (index: number): void => {
      active++;
      let settled = false;
      const settle = (ok: boolean, why?: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        active--;
        if (ok) connected++;
        else {
          failed++;
          error ??= why;
        }
        launch();
      };
      const ws = new WebSocket(urlFor(request.ports, index), { perMessageDeflate: false, skipUTF8Validation: true });
      const client: Client = { ws, index, room: Math.floor(index / topology.roomSize), ready: false };
      const timer = setTimeout(() => {
        settle(false, 'connection timed out');
        ws.terminate();
      }, 15_000);
      const markReady = (): void => {
        if (client.ready) return;
        client.ready = true;
        clients.push(client);
        byRoom[client.room]?.push(client);
        settle(true);
      };
      ws.on('message', (data: Buffer) => onFrame(client, data, markReady));
      // The bare servers send no welcome: they joined the room before the upgrade completed.
      if (kind === 'bare' || kind === 'preframed' || kind === 'bare-ack') ws.once('open', markReady);
      ws.on('error', (err) => settle(false, err.message));
      ws.once('unexpected-response', (_req, res) => {
        settle(false, `HTTP ${String(res.statusCode)}`);
        ws.terminate();
      });
      ws.on('close', () => {
        if (client.ready && !closing) dropped++;
        client.ready = false;
        settle(false, 'closed during handshake');
      });
    };
    launch();
  });
}

/** Publishes at `rate` for `ms`, from members of each room in turn. */
function sendPhase(step: number, rate: number, ms: number): Promise<{ sent: number; expected: number; ms: number }> {
  const rooms = byRoom.filter((members) => members.length > 0);
  // Catch up after a late tick (the receive side keeps this loop busy), but by at most 100 ms worth at once.
  const maxBurst = Math.max(2, Math.ceil(rate * 0.1));
  return new Promise((resolve) => {
    const start = performance.now();
    let sent = 0;
    let expected = 0;
    let n = 0;
    const tick = (): void => {
      const elapsed = Math.min(performance.now() - start, ms);
      const due = Math.floor((rate * elapsed) / 1000);
      for (let burst = 0; sent < due && burst < maxBurst && rooms.length > 0; burst++, n++) {
        const members = rooms[n % rooms.length] as Client[];
        const publisher = members[Math.floor(n / rooms.length) % members.length] as Client;
        if (!publisher.ready) continue;
        const room = roomName(publisher.room);
        const data = `{"k":${step},"n":${n},"t":${nowUs()},"x":"${PAD}"}`;
        publisher.ws.send(
          kind === 'socketio' ? `42["publish",{"room":"${room}","data":${data}}]` : `{"type":"publish","room":"${room}","data":${data}}`,
        );
        sent++;
        let recipients = 0;
        for (const member of members) if (member.ready && member !== publisher) recipients++;
        expected += recipients;
      }
      if (performance.now() - start >= ms) resolve({ sent, expected, ms: performance.now() - start });
      else setTimeout(tick, 2);
    };
    tick();
  });
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1)))] as number;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Counters of every server process; null for one that is gone. */
function readServers(pids: readonly number[]): (CpuTimes | null)[] {
  return pids.map((pid) => readProcessCpu(pid));
}

/**
 * Below this many samples in a window (20 ms of CPU time at 4,999 a second), perf's
 * split is no better than /proc's and /proc's is kept.
 */
const MIN_SPLIT_SAMPLES = 100;

/** A total CPU time, split in the proportion `user` of `samples`. */
function splitBy(total: number, user: number, samples: number): CpuTimes {
  const userMs = (total * user) / samples;
  return { userMs, systemMs: total - userMs };
}

function sumCpu(times: readonly CpuTimes[]): CpuTimes {
  return times.reduce((a, t) => ({ userMs: a.userMs + t.userMs, systemMs: a.systemMs + t.systemMs }), { userMs: 0, systemMs: 0 });
}

/** Reads the Redis counters; a failure ends the Redis figures of the window, not the window. */
async function redisSnapshot(probe: RedisProbe, client: Redis | undefined): Promise<RedisSnapshot | string> {
  if (!client) return 'no connection to Redis';
  try {
    return await snapshotRedis(client, probe.seqKeys, probe.pid);
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

async function run(request: RunRequest): Promise<RunResult> {
  currentStep = -1;
  let redisClient: Redis | undefined;
  let redisError: string | undefined;
  if (request.redis) {
    try {
      redisClient = await openProbeClient(request.redis.url);
    } catch (error) {
      redisError = error instanceof Error ? error.message : String(error);
    }
  }
  try {
    return await measure(request, redisClient, redisError);
  } finally {
    if (redisClient) await closeProbeClient(redisClient);
  }
}

async function measure(request: RunRequest, redisClient: Redis | undefined, redisError: string | undefined): Promise<RunResult> {
  await sendPhase(0, request.rate, request.warmupMs);
  // perf attaches in the pause before the window; only the window's samples are counted.
  const recordings = request.perf ? request.serverPids.map((pid) => new PerfRecording(pid, `${request.step}-${pid}`, request.perf === 'callgraph')) : [];
  for (const recording of recordings) recording.start();
  if (request.callgrind) for (const pid of request.serverPids) await startCounting(pid);
  await sleep(200);
  currentStep = request.step;
  received = 0;
  stale = 0;
  acks = 0;
  errors = 0;
  dropped = 0;
  firstError = undefined;
  latencyCount = 0;
  // Redis first and last: its counters then cover the whole window the CPU counters do.
  const redis0 = request.redis ? await redisSnapshot(request.redis, redisClient) : undefined;
  const server0 = readServers(request.serverPids);
  const main0 = request.serverPids.map((pid) => readMainThreadCpu(pid));
  const runtime0 = request.serverPids.map((pid) => [readRuntimeMs(pid), readRuntimeMs(pid, true)]);
  const self0 = readProcessCpu(process.pid);
  const machine0 = readMachineCpu();
  const t0 = performance.now();
  const start = Number(process.hrtime.bigint() / 1000n);
  const phase = await sendPhase(request.step, request.rate, request.measureMs);
  const drainUntil = performance.now() + request.drainMs;
  // With Redis figures, every publish's ack too: the acks are the publishes Redis counts are divided by.
  const ackAll = request.redis !== undefined && kind === 'roomwire';
  while ((received < phase.expected || (ackAll && acks < phase.sent)) && performance.now() < drainUntil) await sleep(5);
  const t1 = performance.now();
  const windowMs = t1 - t0;
  const end = Number(process.hrtime.bigint() / 1000n);
  const server1 = readServers(request.serverPids);
  const main1 = request.serverPids.map((pid) => readMainThreadCpu(pid));
  const runtime1 = request.serverPids.map((pid) => [readRuntimeMs(pid), readRuntimeMs(pid, true)]);
  const self1 = readProcessCpu(process.pid);
  const machine1 = readMachineCpu();
  const redis1 = request.redis ? await redisSnapshot(request.redis, redisClient) : undefined;
  if (request.callgrind) for (const pid of request.serverPids) await stopCounting(pid);
  await Promise.all(recordings.map((recording) => recording.stop()));
  const perfSplits = recordings.length > 0 ? recordings.map((recording) => recording.split({ start, end })) : null;
  if (request.perf !== 'callgraph') for (const recording of recordings) recording.remove();
  const procServers = request.serverPids.map((_, i) => cpuDelta(server0[i] ?? null, server1[i] ?? null));
  const procMain = request.serverPids.map((_, i) => cpuDelta(main0[i] ?? null, main1[i] ?? null));
  // perf's split only where every server has enough samples for it to be better than /proc's.
  const usePerf = perfSplits !== null && perfSplits.every((split) => split.samples >= MIN_SPLIT_SAMPLES && split.main > 0);
  // The samples' split of the scheduler's exact time on a CPU (else of /proc's, in 10 ms ticks).
  const runtime = (i: number, which: 0 | 1, proc: CpuTimes): number => {
    const before = runtime0[i]?.[which];
    const after = runtime1[i]?.[which];
    return before != null && after != null ? after - before : proc.userMs + proc.systemMs;
  };
  const servers = usePerf ? procServers.map((cpu, i) => splitBy(runtime(i, 0, cpu), perfSplits[i]!.user, perfSplits[i]!.samples)) : procServers;
  const mains = usePerf ? procMain.map((cpu, i) => splitBy(runtime(i, 1, cpu), perfSplits[i]!.mainUser, perfSplits[i]!.main)) : procMain;
  let redis: RedisWindow | null = null;
  if (request.redis && typeof redis0 === 'object' && typeof redis1 === 'object') redis = redisWindow(redis0, redis1, request.redis.seqKeys);
  else if (request.redis) redisError ??= typeof redis0 === 'string' ? redis0 : typeof redis1 === 'string' ? redis1 : 'unknown';
  const sorted = latencies.slice(0, latencyCount).sort();
  const ms = (us: number): number => us / 1000;
  const loadgenGc = await gcBetween(t0, t1);
  return {
    rate: request.rate,
    sent: phase.sent,
    sentRate: (phase.sent * 1000) / phase.ms,
    expected: phase.expected,
    received,
    lost: Math.max(0, phase.expected - received),
    stale,
    acks,
    errors,
    firstError,
    dropped,
    sendMs: phase.ms,
    windowMs,
    windowUs: { start, end },
    drained: received >= phase.expected,
    latency: {
      count: latencyCount,
      p50Ms: ms(percentile(sorted, 0.5)),
      p90Ms: ms(percentile(sorted, 0.9)),
      p99Ms: ms(percentile(sorted, 0.99)),
      maxMs: ms(sorted.length > 0 ? (sorted[sorted.length - 1] as number) : Number.NaN),
    },
    server: sumCpu(servers),
    serverMainThread: sumCpu(mains),
    servers,
    split: usePerf ? 'perf' : 'proc',
    serverProc: sumCpu(procServers),
    perfSplits,
    perfFiles: request.perf === 'callgraph' ? recordings.map((recording) => recording.file) : [],
    loadgen: cpuDelta(self0, self1),
    machine: machineDelta(machine0, machine1),
    redis,
    redisError,
    loadgenGc,
  };
}

function close(): { closed: number } {
  closing = true;
  const count = clients.length;
  for (const client of clients) {
    client.ready = false;
    client.ws.terminate();
  }
  clients = [];
  byRoom = [];
  currentStep = -1;
  return { closed: count };
}

serveRequests((request) => {
  switch (request.cmd) {
    case 'connect':
      return connect(request as unknown as ConnectRequest);
    case 'run':
      return run(request as unknown as RunRequest);
    case 'close':
      return close();
    default:
      throw new Error(`unknown request ${String(request.cmd)}`);
  }
});
reportEvent('ready', { pid: process.pid, fdLimit: openFilesLimit() });
