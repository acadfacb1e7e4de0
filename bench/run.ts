/**
 * roomwire's benchmark (issue 7): roomwire, a bare `ws` loop and Socket.IO 4.8, each in
 * its own process on 127.0.0.1, driven by one load generator process.
 *
 *   npm run bench                 full run (about 9 minutes on 2 cores); updates docs/benchmarks.md
 *   npm run bench -- --quick      smoke run (about 1 minute); writes bench/results/quick.*
 *   npm run bench -- --profile    CPU profiles (node --cpu-prof) of each server under the small-rooms load
 *   npm run bench -- --perf --only=small   where each server's CPU goes (Linux perf), kernel and helper threads included
 *   npm run bench -- --callgrind  instructions per delivery (Valgrind's callgrind): a figure that does not move with the machine's load
 *
 * Options: --only=small,big,ladder,idle,cluster  --servers=roomwire,bare,socketio  --reps=N  --docs (write the docs
 * from a quick or partial run too)  --redis=URL (the cluster scenario's Redis; default redis://127.0.0.1:6379)
 * --warmup=MS and --measure=MS (the small-rooms and big-room warm-up and measured window; a run with either is partial).
 *
 * The cluster scenario (roomwire alone, then 3 roomwire processes on one Redis) is skipped, with the reason, when
 * Redis does not answer; its results also go to bench/results/cluster.json.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import type { Redis } from 'ioredis';
import { cpus, loadavg, release, tmpdir, totalmem, platform } from 'node:os';
import { join } from 'node:path';
import type { ConnectResult, RunRequest, RunResult, ServerKind } from './loadgen.js';
import type { MemoryReport, ReadyEvent } from './servers/harness.js';
import { buildEntries, ENTRIES, type EntryName } from './lib/build.js';
import { closeProbeClient, countPrefix, DEFAULT_REDIS_URL, deletePrefix, describeRedis, openProbeClient, runPrefix, seqKey, type RedisConfig } from './lib/redis.js';
import { summarizeProfile } from './lib/cpuprofile.js';
import { ChildHandle, killAllChildren, ROOT } from './lib/ipc.js';
import { readProcessCpu } from './lib/proc.js';
import { CALLGRIND_CATEGORIES, CALLGRIND_NODE_FLAGS, CALLGRIND_SCALE, callgrindCommand, callgrindScale, callgrindUnavailable, latestDump, readDump, type CallgrindCategory } from './lib/callgrind.js';
import { categorizeRecording, PERF_CATEGORIES, PERF_FREQUENCY, SPLIT_FREQUENCY, perfUnavailable, removePerfFiles, removeRecording, v8LogPattern, type CategorizedSamples, type PerfCategory } from './lib/perf.js';
import { baseComparison, chartSvg, clusterMarkdown, headline, profileMarkdown, replaceSection, resultsMarkdown, setupLabel, targets } from './lib/report.js';
import {
  SERVER_LABEL,
  type ClusterComparison,
  type ClusterDerived,
  type ClusterResult,
  type ClusterResults,
  type ClusterSetup,
  type ClusterStep,
  type ClusterSummary,
  type Derived,
  type IdleResult,
  type IdleStep,
  type IdleSummary,
  type LadderResult,
  type LadderRun,
  type LadderStep,
  type LoadFigures,
  type LoadPlan,
  type ClusterPlan,
  type LoadScenarioResult,
  type LoadStep,
  type LoadSummary,
  type Meta,
  type ProfileResults,
  type Results,
} from './lib/results.js';
import { fmt, fmtRatio, median, ratio } from './lib/stats.js';
import { roomCount, roomName, type Topology } from './lib/topology.js';

// ---------------------------------------------------------------- plan

interface LadderPlan {
  topology: Topology;
  rates: number[];
  reps: number;
  warmupMs: number;
  measureMs: number;
  drainMs: number;
  criteria: LadderResult['criteria'];
}

interface IdlePlan {
  connections: number;
  first: number;
  roomSize: number;
  reps: number;
  settleMs: number;
}

const args = process.argv.slice(2);
const flag = (name: string): boolean => args.includes(`--${name}`);
const option = (name: string): string | undefined => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const known = ['--quick', '--profile', '--perf', '--split=', '--docs', '--tsx', '--only=', '--servers=', '--reps=', '--warmup=', '--measure=', '--src=', '--base=', '--server-flags=', '--redis=', '--callgrind'];
const unknown = args.filter((a) => !known.some((k) => (k.endsWith('=') ? a.startsWith(k) : a === k)));
if (unknown.length > 0) {
  console.error(`unknown option(s): ${unknown.join(' ')}\nusage: npm run bench [-- --quick] [--profile] [--perf] [--split=perf|proc] [--only=small,big,ladder,idle,cluster] [--servers=roomwire,bare,socketio] [--reps=N] [--warmup=MS] [--measure=MS] [--docs] [--tsx] [--src=DIR] [--base=DIR] [--server-flags=--trace-gc,…] [--redis=URL] [--callgrind]`);
  process.exit(2);
}

const quick = flag('quick');
const profileMode = flag('profile');
/** `--perf`: Linux perf samples of every small-rooms and big-room window, sorted by where the time went (bench/lib/perf.ts). */
const perfMode = flag('perf');
/**
 * `--callgrind`: the servers run under Valgrind's callgrind, which counts the instructions
 * each executes over the window: the small-rooms step (and the big-room one with
 * `--only=big`), load scaled down to what a server under Valgrind keeps up with
 * (bench/lib/callgrind.ts). A partial run; its figures go to bench/results/callgrind.json.
 */
const callgrindMode = flag('callgrind');
if (callgrindMode && (perfMode || flag('profile'))) {
  console.error('--callgrind runs the servers under Valgrind, which --perf and --profile cannot measure: use one at a time');
  process.exit(2);
}
/**
 * `--split=perf|proc`: where the user/system split of the servers' CPU time comes from.
 * perf (the default where it runs) samples each window; /proc's split is the kernel's
 * tick-based one, which was off by up to a quarter per window for servers that run in
 * step with the ticks (docs/benchmarks.md, "How it measures"). Settled in main().
 */
let splitMode: 'perf' | 'proc' = option('split') === 'proc' || callgrindMode ? 'proc' : 'perf';
const ALL_SERVERS: ServerKind[] = ['roomwire', 'bare', 'socketio'];
const KNOWN_SERVERS: ServerKind[] = [...ALL_SERVERS, 'preframed', 'bare-ack'];
/** `--base=DIR`: roomwire built from DIR runs too, right after roomwire in each round, as `roomwire (base)`. */
const baseDir = option('base');
const servers = (option('servers')?.split(',') ?? ALL_SERVERS).filter((s): s is ServerKind => (KNOWN_SERVERS as string[]).includes(s));
if (baseDir !== undefined) servers.splice(servers.includes('roomwire') ? servers.indexOf('roomwire') + 1 : 0, 0, 'roomwire-base');
const only = option('only')?.split(',');
const runs = (name: string): boolean =>
  callgrindMode ? (name === 'small' || name === 'big') && (only ?? ['small']).includes(name) : only === undefined || only.includes(name);
const repsOverride = option('reps') === undefined ? undefined : Math.max(1, Number(option('reps')));
const reps = (n: number): number => repsOverride ?? n;
const warmupOverride = option('warmup') === undefined ? undefined : Math.max(0, Number(option('warmup')));
/** The small-rooms and big-room warm-up, unless `--warmup=MS` says otherwise. */
const warmup = (ms: number): number => warmupOverride ?? ms;
const measureOverride = option('measure') === undefined ? undefined : Math.max(1_000, Number(option('measure')));
/**
 * The small-rooms and big-room measured window, unless `--measure=MS` says otherwise: a
 * window longer than about 20 s takes in the servers' heartbeats (roomwire's and
 * Socket.IO's ping every 25 s), which the default steps end before.
 */
const measure = (ms: number): number => measureOverride ?? ms;

const small: LoadPlan = {
  name: 'small rooms',
  description: '2,000 connections in 200 rooms of 10, 1,000 publishes/s spread over the rooms (9,000 deliveries/s)',
  topology: { connections: 2_000, roomSize: 10 },
  rate: 1_000,
  // Five, not three: at under a fifth of a core per server, one window's CPU moves by a
  // third with the machine's other load, and the median of three still moved run to run.
  reps: reps(quick ? 1 : 5),
  warmupMs: warmup(quick ? 500 : 2_000),
  measureMs: measure(quick ? 2_000 : 6_000),
  drainMs: quick ? 1_500 : 3_000,
};
const big: LoadPlan = {
  name: 'big room',
  description: '2,000 connections in one room, 20 publishes/s (39,980 deliveries/s)',
  topology: { connections: 2_000, roomSize: 2_000 },
  rate: 20,
  reps: reps(quick ? 1 : 3),
  warmupMs: warmup(quick ? 500 : 2_000),
  measureMs: measure(quick ? 2_000 : 6_000),
  drainMs: quick ? 1_500 : 3_000,
};
/**
 * Under --callgrind: the load divided, and the warm-up and window multiplied, by the
 * scenario's CALLGRIND_SCALE, so the window holds as many publishes; one rep unless
 * `--reps` says otherwise, and a longer drain, as latencies under Valgrind reach seconds.
 */
function forCallgrind(plan: LoadPlan): LoadPlan {
  const scale = callgrindScale(plan.name);
  return { ...plan, rate: plan.rate / scale, reps: reps(1), warmupMs: plan.warmupMs * scale, measureMs: plan.measureMs * scale, drainMs: Math.max(plan.drainMs, 10_000) };
}
const ladderPlan: LadderPlan = {
  topology: { connections: 2_000, roomSize: 10 },
  // Two cores hold the server and the load generator: the ceiling is near 3,000 publishes/s.
  rates: quick ? [1_000, 2_000] : [1_000, 1_500, 2_000, 2_500, 3_000, 4_000],
  reps: reps(quick ? 1 : 2),
  warmupMs: quick ? 500 : 1_000,
  measureMs: quick ? 1_000 : 3_000,
  drainMs: quick ? 1_500 : 2_000,
  criteria: { maxLossRatio: 0.001, maxP99Ms: 100, stopP99Ms: 1_000, minSentRatio: 0.95 },
};
const idlePlan: IdlePlan = {
  connections: quick ? 2_000 : 10_000,
  first: quick ? 200 : 1_000,
  roomSize: 10,
  reps: reps(quick ? 1 : 3),
  settleMs: 1_000,
};
const clusterPlan: ClusterPlan = {
  description:
    '2,000 connections in 200 rooms of 10, spread round-robin over the processes (connection i on process i mod N, so every room has members on every process); publishes from members on every process',
  topology: { connections: 2_000, roomSize: 10 },
  processes: 3,
  // 1,000/s is the small-rooms load; 2,000/s is as high as 2 cores go with 3 servers, Redis and the load generator.
  rates: [1_000, 2_000],
  reps: reps(quick ? 1 : 2),
  // 2,000 publishes at the first rate: every connection publishes once, so every process has published into every room
  // before the first window and the one-time cost of a process's first broadcast into a room (a participants notice on
  // the control channel) stays out of the windows.
  warmupMs: 2_000,
  measureMs: quick ? 2_000 : 5_000,
  drainMs: quick ? 1_500 : 2_000,
};
const redisUrl = option('redis') ?? DEFAULT_REDIS_URL;
/** Hard bound on the whole run: whatever happens, the children die and the process ends. */
const RUN_LIMIT_MS = (callgrindMode ? 60 : profileMode ? 5 : quick ? 4 : 14) * 60_000;

/** `--server-flags=a,b`: extra node flags for the servers (say `--trace-gc`), for investigations. */
const serverFlags = option('server-flags')?.split(',').filter(Boolean) ?? [];
/** Node flags the runner adds for a mode: perf needs the JIT's symbol map (and V8 then writes a log, kept out of the repository). */
/**
 * Under --callgrind the young generation is fixed at the size it grows to within seconds of
 * a plain run (`CALLGRIND_NODE_FLAGS`), since V8 sizes it by allocations per millisecond of
 * wall-clock time, which Valgrind's slowness makes about 60 times fewer.
 */
const modeFlags = perfMode ? ['--perf-basic-prof', '--no-logfile-per-isolate', `--logfile=${v8LogPattern()}`] : callgrindMode ? [...CALLGRIND_NODE_FLAGS] : [];
/** `--tsx`: run the children from their TypeScript under tsx instead of esbuild bundles (see lib/build.ts). */
const useTsx = flag('tsx');
if (useTsx && baseDir !== undefined) {
  console.error('--base builds roomwire from another source directory, which --tsx cannot: use one or the other');
  process.exit(2);
}
/** The script of each child and the node flags it needs; set by main() once the bundles are built. */
let scripts: Record<EntryName, string> = { ...ENTRIES };
const runnerFlags = useTsx ? ['--import', 'tsx'] : [];

// ---------------------------------------------------------------- process hygiene

const startedAt = Date.now();
const notes: string[] = [];
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What must be undone even when the run is cut short (the cluster scenario's keys in Redis). */
const cleanups = new Set<() => Promise<void>>();

/** Set once the run is being stopped: nothing is written after that. */
let aborting = false;

/** Kills the children, then runs the cleanups (at most 3 s) and exits. */
function abort(code: number): void {
  if (aborting) return;
  aborting = true;
  killAllChildren();
  if (cleanups.size === 0) process.exit(code);
  // A killed server's last heartbeat may still be on its way to Redis.
  void sleep(200)
    .then(() => Promise.race([Promise.allSettled([...cleanups].map((cleanup) => cleanup())), sleep(3_000)]))
    .finally(() => process.exit(code));
}

process.on('exit', killAllChildren);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    console.error(`\n${signal}: stopping every child process`);
    abort(130);
  });
}
const runLimit = setTimeout(() => {
  console.error(`\nthe run exceeded its ${RUN_LIMIT_MS / 60_000} minute limit; stopping every child process`);
  abort(1);
}, RUN_LIMIT_MS);
runLimit.unref();

function elapsed(): string {
  const s = Math.round((Date.now() - startedAt) / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

let stepsDone = 0;
let stepsTotal = 0;
function progress(line: string): void {
  stepsDone++;
  console.log(`[${elapsed().padStart(5)} ${String(stepsDone).padStart(2)}/${stepsTotal}] ${line}`);
}

// ---------------------------------------------------------------- children

interface RunningServer {
  child: ChildHandle;
  port: number;
  pid: number;
  fdLimit: number | null;
}

async function startServer(kind: ServerKind, topology: Topology, nodeFlags: string[] = []): Promise<RunningServer> {
  return startChild(kind, `${SERVER_LABEL[kind]} server`, [JSON.stringify(topology)], nodeFlags);
}

/** Starts one server process from its bundle and waits until it listens. */
async function startChild(entry: EntryName, name: string, childArgs: string[], nodeFlags: string[] = []): Promise<RunningServer> {
  const child = new ChildHandle(scripts[entry], childArgs, {
    name,
    nodeFlags: [...runnerFlags, '--expose-gc', ...modeFlags, ...serverFlags, ...nodeFlags],
    wrapper: callgrindMode ? callgrindCommand(callgrindDir(), entry) : undefined,
  });
  // Valgrind takes its time to start node (it translates every instruction it runs).
  const ready = child.waitEvent<ReadyEvent>('ready', callgrindMode ? 300_000 : 30_000);
  try {
    const event = await ready;
    return { child, port: event.port, pid: event.pid, fdLimit: event.fdLimit };
  } catch (error) {
    await child.stop(1_000);
    // Under --callgrind, Valgrind writes why the server did not start to its log, not to the console.
    if (callgrindMode) console.error(`  ! Valgrind's log of the ${name}: ${join(callgrindDir(), `${entry}.${child.pid}.log`)}`);
    throw error;
  }
}

/** Started by main() after the build. */
let loadgen: ChildHandle | undefined;
function lg(): ChildHandle {
  if (!loadgen) throw new Error('the load generator is not running');
  return loadgen;
}

let stepNumber = 0;

/** Opens connections [from, to) on the servers: connection i on the (i mod N)-th. */
async function connectAll(kind: ServerKind, on: RunningServer[], topology: Topology, from: number, to: number): Promise<ConnectResult> {
  const result = await lg().request<ConnectResult>(
    { cmd: 'connect', kind, ports: on.map((server) => server.port), topology, from, to, concurrency: 64, timeoutMs: 90_000 },
    120_000,
  );
  if (result.failed > 0) {
    const note = `${SERVER_LABEL[kind]}: ${result.failed} of ${to - from} connections failed (${result.firstError ?? 'unknown'})`;
    console.warn(`  ! ${note}`);
    notes.push(note);
  }
  return result;
}

type Timing = { warmupMs: number; measureMs: number; drainMs: number; callGraph?: boolean; split?: boolean };

/**
 * One window; `callGraph` (under --perf) keeps its perf recording, with call chains, for
 * the caller to sort and remove; `split: false` keeps /proc's user/system split (the
 * ladder, which reports no CPU figures, needs no recording).
 */
function runOnce(server: RunningServer, rate: number, timing: Timing): Promise<RunResult> {
  const perf = timing.callGraph ? 'callgraph' : splitMode === 'perf' && timing.split !== false ? 'split' : undefined;
  const { warmupMs, measureMs, drainMs } = timing;
  const request: RunRequest = { cmd: 'run', rate, warmupMs, measureMs, drainMs, step: ++stepNumber, serverPids: [server.pid], perf, callgrind: callgrindMode };
  return lg().request<RunResult>(request, timing.warmupMs + timing.measureMs + timing.drainMs + (callgrindMode ? 300_000 : 60_000));
}

/**
 * Time the whole run may spend measuring a window again because other processes were
 * busy during it (this benchmark usually shares its machine).
 */
let retryBudgetMs = quick ? 0 : 60_000;
/** No window is measured again past this point of the run, so the full run stays under 10 minutes. */
const RETRY_DEADLINE_MS = 7.5 * 60_000;
let retries = 0;
const MAX_ATTEMPTS = 3;

/**
 * One measured window; measured again (up to MAX_ATTEMPTS, within the retry budget) when
 * other processes used more than NOISY_PCT of a core meanwhile. Keeps the quietest window:
 * the choice depends on the machine's load, never on the figures measured.
 */
async function runLoad(server: RunningServer, rate: number, timing: Timing): Promise<RunResult> {
  let best: { run: RunResult; other: number } | undefined;
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const run = await runOnce(server, rate, timing);
    const other = derive(run).otherCpuPct;
    if (!best || other < best.other) {
      if (best) removeRecordings(best.run);
      best = { run, other };
    } else removeRecordings(run);
    const cost = timing.warmupMs + timing.measureMs + 1_000;
    // Under --perf the one recording covers the first window, under --callgrind the one count: no second one.
    if (timing.callGraph || callgrindMode || other <= NOISY_PCT || attempt === MAX_ATTEMPTS || retryBudgetMs < cost || Date.now() - startedAt > RETRY_DEADLINE_MS) break;
    retryBudgetMs -= cost;
    retries++;
    console.log(`        (other processes used ${fmt(other, 2)}% of a core during that window: measuring it again)`);
  }
  if (!best) throw new Error('no window measured');
  return best.run;
}

function removeRecordings(run: RunResult): void {
  for (const file of run.perfFiles) removeRecording(file);
}

async function teardown(server: RunningServer): Promise<void> {
  // The server goes first, so the TIME_WAIT sockets are on its side (its port), not on the client's ephemeral ports.
  await server.child.stop();
  await lg().request({ cmd: 'close' }, 30_000);
}

function derive(run: RunResult): Derived {
  const perDelivery = (ms: number): number => (run.received > 0 ? (ms * 1000) / run.received : Number.NaN);
  const pct = (ms: number): number => (100 * ms) / run.windowMs;
  const serverMs = run.server.userMs + run.server.systemMs;
  const loadgenMs = run.loadgen.userMs + run.loadgen.systemMs;
  return {
    deliveriesPerS: (run.received * 1000) / run.sendMs,
    userUsPerDelivery: perDelivery(run.server.userMs),
    mainThreadUserUsPerDelivery: perDelivery(run.serverMainThread.userMs),
    systemUsPerDelivery: perDelivery(run.server.systemMs),
    totalUsPerDelivery: perDelivery(serverMs),
    serverCpuPct: pct(serverMs),
    loadgenCpuPct: pct(loadgenMs),
    // /proc/stat and the per-process counters tick separately: a few % below zero is rounding.
    otherCpuPct: Math.max(0, pct(run.machine.busyMs - serverMs - loadgenMs)),
    lossRatio: run.expected > 0 ? run.lost / run.expected : 0,
  };
}

/** With perf's split, what /proc's would have said: how far the tick-based split was off in this window. */
function procUser(run: RunResult): string {
  return run.split === 'perf' && run.received > 0 ? `, /proc: ${fmt((run.serverProc.userMs * 1000) / run.received)}` : '';
}

function describeRun(run: RunResult, d: Derived): string {
  const extra = [
    run.errors > 0 ? `${run.errors} errors (${run.firstError ?? ''})` : '',
    run.dropped > 0 ? `${run.dropped} dropped` : '',
    run.sentRate < run.rate * 0.95 ? `load gen. sent only ${fmt(run.sentRate)}/s` : '',
  ].filter(Boolean);
  const gc = run.loadgenGc;
  return (
    `${fmt(d.deliveriesPerS).padStart(6)} del/s  user ${fmt(d.userUsPerDelivery).padStart(5)} µs (main thread ${fmt(d.mainThreadUserUsPerDelivery).padStart(5)}${procUser(run)})  sys ${fmt(d.systemUsPerDelivery).padStart(5)} µs` +
    `  p50 ${fmt(run.latency.p50Ms)} p99 ${fmt(run.latency.p99Ms)} ms  loss ${fmt(d.lossRatio * 100)}%` +
    `  (cpu: server ${fmt(d.serverCpuPct, 2)}%, load gen. ${fmt(d.loadgenCpuPct, 2)}%, other ${fmt(d.otherCpuPct, 2)}%)` +
    `  load gen. GC ${gc.count}× (${gc.major} full) ${fmt(gc.totalMs)} ms, max ${fmt(gc.maxMs)}` +
    (extra.length > 0 ? `  ${extra.join(', ')}` : '') +
    (d.otherCpuPct > NOISY_PCT ? '  [noisy]' : '')
  );
}

// ---------------------------------------------------------------- scenarios

async function loadStep(plan: LoadPlan, kind: ServerKind, rep: number, nodeFlags: string[] = []): Promise<LoadStep> {
  const server = await startServer(kind, plan.topology, nodeFlags);
  try {
    const connect = await connectAll(kind, [server], plan.topology, 0, plan.topology.connections);
    const run = await runLoad(server, plan.rate, { ...plan, callGraph: perfMode });
    // Under --perf the load generator kept the window's recording, with call chains.
    const [recording] = run.perfFiles;
    if (recording !== undefined) {
      addPerf(plan.name, kind, categorizeRecording(recording, server.pid, run.windowUs, serverFileOf(kind)), run.received);
      removeRecordings(run);
    }
    if (callgrindMode) addCallgrind(plan.name, kind, server.pid, run.received);
    if (!server.child.alive) throw new Error(`the ${SERVER_LABEL[kind]} server exited during the ${plan.name} step (see its output above)`);
    const memoryAfter = await server.child.request<MemoryReport>({ cmd: 'memory' }, 30_000).catch(() => undefined);
    const derived = derive(run);
    countWindow(run, derived);
    progress(`${plan.name.padEnd(11)} rep ${rep + 1}/${plan.reps} ${SERVER_LABEL[kind].padEnd(9)} ${describeRun(run, derived)}`);
    return { server: kind, rep, connect, run, derived, memoryAfter };
  } finally {
    await teardown(server);
    if (perfMode) removePerfFiles(server.pid);
  }
}

// ---------------------------------------------------------------- --perf

/** What the windows of one scenario and server added up to (perf's samples, callgrind's instructions). */
interface WindowTotal<C extends string> {
  counts: Record<C, number>;
  functions: Map<string, number>;
  deliveries: number;
  windows: number;
}
type WindowTotals<C extends string> = Map<string, Map<ServerKind, WindowTotal<C>>>;

/** Adds one window's counts, by category and by function, to its scenario's and server's total. */
function addWindow<C extends string>(
  totals: WindowTotals<C>,
  categories: readonly C[],
  scenario: string,
  kind: ServerKind,
  window: { counts: Record<C, number>; functions: Map<string, number>; deliveries: number },
): void {
  const byServer = totals.get(scenario) ?? new Map<ServerKind, WindowTotal<C>>();
  totals.set(scenario, byServer);
  const counts = Object.fromEntries(categories.map((c) => [c, 0])) as Record<C, number>;
  const total = byServer.get(kind) ?? { counts, functions: new Map<string, number>(), deliveries: 0, windows: 0 };
  for (const category of categories) total.counts[category] += window.counts[category];
  for (const [name, count] of window.functions) total.functions.set(name, (total.functions.get(name) ?? 0) + count);
  total.deliveries += window.deliveries;
  total.windows++;
  byServer.set(kind, total);
}

/** Samples and deliveries of every recorded window, by scenario and server. */
const perfTotals: WindowTotals<PerfCategory> = new Map();

/** Functions listed per server in bench/results/perf.json, and differences printed against the bare loop. */
const TOP_FUNCTIONS = 40;
const TOP_DIFFERENCES = 15;

function addPerf(scenario: string, kind: ServerKind, { categories, functions }: CategorizedSamples, deliveries: number): void {
  addWindow(perfTotals, PERF_CATEGORIES, scenario, kind, { counts: categories, functions, deliveries });
}

/** Frames of the server's own code: its bundle (or its sources under --tsx), and Socket.IO's packages. */
function serverFileOf(kind: ServerKind): RegExp {
  const socketio = kind === 'socketio' ? String.raw`|node_modules/(socket\.io|engine\.io)` : '';
  return new RegExp(String.raw`roomwire-bench/${kind}\.js|bench/servers/|/src/` + socketio);
}

/** CPU µs per delivery in each category, per scenario and server: printed, and written to bench/results/perf.json. */
function reportPerf(): void {
  if (perfTotals.size === 0) return;
  const out: Record<string, Record<string, { windows: number; deliveries: number; usPerDelivery: Record<string, number>; topFunctions: Record<string, number> }>> = {};
  for (const [scenario, byServer] of perfTotals) {
    const kinds = [...byServer.keys()];
    console.log(`\nwhere the CPU goes, ${scenario} (perf, ${PERF_FREQUENCY} samples/s; µs per delivery):`);
    const line = tableLine(kinds, 42);
    console.log(line('', (k) => SERVER_LABEL[k]));
    const perDelivery = (kind: ServerKind, category: PerfCategory): number => {
      const total = byServer.get(kind);
      return total && total.deliveries > 0 ? (total.counts[category] * 1e6) / PERF_FREQUENCY / total.deliveries : Number.NaN;
    };
    for (const category of PERF_CATEGORIES) console.log(line(category, (k) => fmt(perDelivery(k, category))));
    const sum = (kind: ServerKind): number => PERF_CATEGORIES.reduce((a, c) => a + perDelivery(kind, c), 0);
    console.log(line('all', (k) => fmt(sum(k))));
    const functionUs = (kind: ServerKind, name: string): number => {
      const total = byServer.get(kind);
      return total && total.deliveries > 0 ? ((total.functions.get(name) ?? 0) * 1e6) / PERF_FREQUENCY / total.deliveries : 0;
    };
    printFunctionDifferences(scenario, byServer, functionUs, 'user space, main thread, self µs');
    out[scenario] = Object.fromEntries(
      kinds.map((kind) => {
        const total = byServer.get(kind)!;
        const top = [...total.functions].sort((a, b) => b[1] - a[1]).slice(0, TOP_FUNCTIONS);
        return [
          kind,
          {
            windows: total.windows,
            deliveries: total.deliveries,
            usPerDelivery: Object.fromEntries(PERF_CATEGORIES.map((c) => [c, perDelivery(kind, c)])),
            topFunctions: Object.fromEntries(top.map(([name]) => [name, functionUs(kind, name)])),
          },
        ];
      }),
    );
  }
  writeFileSync(join(ROOT, 'bench/results/perf.json'), `${JSON.stringify({ date: new Date().toISOString(), command, frequency: PERF_FREQUENCY, scenarios: out }, null, 2)}\n`);
  console.log('wrote bench/results/perf.json');
}

/** Formats the rows of a per-server table: the row's name, then a column per server, each wide enough for the server's name. */
function tableLine(kinds: readonly ServerKind[], nameWidth: number): (name: string, cell: (kind: ServerKind) => string) => string {
  const width = Math.max(15, ...kinds.map((kind) => SERVER_LABEL[kind].length + 2));
  return (name, cell) => `  ${name.padEnd(nameWidth)}${kinds.map((kind) => cell(kind).padStart(width)).join('')}`;
}

/**
 * The functions where each server spends the most more (or less) than the bare loop
 * does, per delivery: what is left to find in a hot path. `what` says what is counted
 * (`user space, main thread, self µs`).
 */
function printFunctionDifferences(
  scenario: string,
  byServer: Map<ServerKind, { functions: Map<string, number> }>,
  perDelivery: (kind: ServerKind, name: string) => number,
  what: string,
): void {
  if (!byServer.has('bare')) return;
  for (const kind of byServer.keys()) {
    if (kind === 'bare') continue;
    const names = new Set([...(byServer.get(kind)?.functions.keys() ?? []), ...(byServer.get('bare')?.functions.keys() ?? [])]);
    const rows = [...names].map((name) => ({ name, mine: perDelivery(kind, name), bare: perDelivery('bare', name) })).sort((a, b) => Math.abs(b.mine - b.bare) - Math.abs(a.mine - a.bare));
    console.log(`\n  ${scenario}, ${SERVER_LABEL[kind]} against bare ws, by function (${what} per delivery; largest differences):`);
    console.log(`  ${SERVER_LABEL[kind].padStart(10)}${'bare ws'.padStart(10)}${'diff'.padStart(10)}  function`);
    for (const row of rows.slice(0, TOP_DIFFERENCES)) {
      const diff = row.mine - row.bare;
      console.log(`  ${fmt(row.mine).padStart(10)}${fmt(row.bare).padStart(10)}${`${diff >= 0 ? '+' : ''}${fmt(diff)}`.padStart(10)}  ${row.name.slice(0, 100)}`);
    }
  }
}

// ---------------------------------------------------------------- --callgrind

/** Where the servers' callgrind dumps go: a directory of the machine's temp dir, made on first use. */
let callgrindDirectory: string | undefined;
function callgrindDir(): string {
  callgrindDirectory ??= mkdtempSync(join(tmpdir(), 'roomwire-callgrind-'));
  return callgrindDirectory;
}

/** Instructions and deliveries of every counted window, by scenario and server. */
const callgrindTotals: WindowTotals<CallgrindCategory> = new Map();

/** Reads the window's dump of one server and adds it to its scenario's totals. */
function addCallgrind(scenario: string, kind: ServerKind, pid: number, deliveries: number): void {
  const dump = latestDump(callgrindDir(), kind, pid);
  if (dump === undefined) throw new Error(`callgrind wrote no dump for the ${SERVER_LABEL[kind]} server (see its log in ${callgrindDir()})`);
  const counts = readDump(dump);
  addWindow(callgrindTotals, CALLGRIND_CATEGORIES, scenario, kind, { counts: counts.categories, functions: counts.functions, deliveries });
  console.log(`        ${SERVER_LABEL[kind]}: ${fmt(counts.total / Math.max(1, deliveries))} instructions per delivery (${fmt(counts.total / 1e6)} M over ${fmt(deliveries)} deliveries)`);
}

/** Instructions per delivery by category and in all, per scenario and server: printed, and written to bench/results/callgrind.json. */
function reportCallgrind(): void {
  if (callgrindTotals.size === 0) return;
  const out: Record<string, Record<string, { windows: number; deliveries: number; instructionsPerDelivery: number; vsBare: number | null; byCategory: Record<string, number>; topFunctions: Record<string, number> }>> = {};
  for (const [scenario, byServer] of callgrindTotals) {
    const kinds = [...byServer.keys()];
    const scale = callgrindScale(scenario);
    console.log(`\ninstructions per delivery, ${scenario} (callgrind, every thread of the server, user space; load 1/${scale} of the plain run's):`);
    const line = tableLine(kinds, 30);
    console.log(line('', (k) => SERVER_LABEL[k]));
    type Total = WindowTotal<CallgrindCategory>;
    const per = (kind: ServerKind, count: (t: Total) => number): number => {
      const total = byServer.get(kind);
      return total && total.deliveries > 0 ? count(total) / total.deliveries : Number.NaN;
    };
    // The categories hold every instruction of the window (readDump puts any remainder in the last).
    const instructions = (t: Total): number => CALLGRIND_CATEGORIES.reduce((sum, c) => sum + t.counts[c], 0);
    for (const category of CALLGRIND_CATEGORIES) console.log(line(category, (k) => fmt(per(k, (t) => t.counts[category]))));
    console.log(line('all', (k) => fmt(per(k, instructions))));
    const bare = per('bare', instructions);
    if (Number.isFinite(bare)) console.log(line('against bare ws', (k) => fmtRatio(ratio(per(k, instructions), bare))));
    const base = per('roomwire-base', instructions);
    if (Number.isFinite(base)) console.log(`  roomwire against roomwire (base): ${fmtRatio(ratio(per('roomwire', instructions), base))} (below 1.0× executes fewer instructions than the base)`);
    printFunctionDifferences(scenario, byServer, (kind, name) => per(kind, (t) => t.functions.get(name) ?? 0), 'instructions');
    out[scenario] = Object.fromEntries(
      kinds.map((kind) => {
        const total = byServer.get(kind)!;
        const top = [...total.functions].sort((a, b) => b[1] - a[1]).slice(0, TOP_FUNCTIONS);
        const mine = per(kind, instructions);
        return [
          SERVER_LABEL[kind],
          {
            windows: total.windows,
            deliveries: total.deliveries,
            instructionsPerDelivery: Math.round(mine),
            vsBare: Number.isFinite(bare) ? Number((mine / bare).toFixed(3)) : null,
            byCategory: Object.fromEntries(CALLGRIND_CATEGORIES.map((c) => [c, Math.round(per(kind, (t) => t.counts[c]))])),
            topFunctions: Object.fromEntries(top.map(([name, count]) => [name, Math.round(count / total.deliveries)])),
          },
        ];
      }),
    );
  }
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(
    join(ROOT, 'bench/results/callgrind.json'),
    `${JSON.stringify({ date: new Date().toISOString(), command, machine: machine(), source: measuredSource, scale: CALLGRIND_SCALE, scenarios: out }, null, 2)}\n`,
  );
  console.log(`\nwrote bench/results/callgrind.json (the dumps, for callgrind_annotate or KCachegrind: ${callgrindDir()})`);
}

/** The figures every load run reports, from the reps of one server (or setup). */
function loadFigures(mine: readonly { run: RunResult; derived: Derived }[]): LoadFigures {
  const m = (get: (s: (typeof mine)[number]) => number): number => median(mine.map(get));
  const expected = mine.reduce((a, s) => a + s.run.expected, 0);
  const lost = mine.reduce((a, s) => a + s.run.lost, 0);
  return {
    runs: mine.length,
    deliveriesPerS: m((s) => s.derived.deliveriesPerS),
    userUsPerDelivery: m((s) => s.derived.userUsPerDelivery),
    mainThreadUserUsPerDelivery: m((s) => s.derived.mainThreadUserUsPerDelivery),
    systemUsPerDelivery: m((s) => s.derived.systemUsPerDelivery),
    totalUsPerDelivery: m((s) => s.derived.totalUsPerDelivery),
    p50Ms: m((s) => s.run.latency.p50Ms),
    p99Ms: m((s) => s.run.latency.p99Ms),
    maxMs: m((s) => s.run.latency.maxMs),
    lossRatio: expected > 0 ? lost / expected : 0,
    serverCpuPct: m((s) => s.derived.serverCpuPct),
    loadgenCpuPct: m((s) => s.derived.loadgenCpuPct),
    otherCpuPct: m((s) => s.derived.otherCpuPct),
    errors: mine.reduce((a, s) => a + s.run.errors, 0),
    dropped: mine.reduce((a, s) => a + s.run.dropped, 0),
  };
}

function summarizeLoad(steps: LoadStep[]): LoadScenarioResult['summary'] {
  const summary: LoadScenarioResult['summary'] = {};
  for (const kind of servers) {
    const mine = steps.filter((s) => s.server === kind);
    if (mine.length === 0) continue;
    const m = (get: (s: LoadStep) => number): number => median(mine.map(get));
    const value: LoadSummary = {
      ...loadFigures(mine),
      heapAfterMiB: m((s) => (s.memoryAfter?.heapUsed ?? Number.NaN) / 2 ** 20),
      rssAfterMiB: m((s) => (s.memoryAfter?.rss ?? Number.NaN) / 2 ** 20),
    };
    summary[kind] = value;
  }
  return summary;
}

async function loadScenario(plan: LoadPlan): Promise<LoadScenarioResult> {
  const steps: LoadStep[] = [];
  // Alternation: every server once per rep, so drift in the machine's load spreads over all of them.
  for (let rep = 0; rep < plan.reps; rep++) for (const kind of servers) steps.push(await loadStep(plan, kind, rep));
  return {
    name: plan.name,
    description: plan.description,
    topology: plan.topology,
    rate: plan.rate,
    reps: plan.reps,
    warmupMs: plan.warmupMs,
    measureMs: plan.measureMs,
    steps,
    summary: summarizeLoad(steps),
  };
}

async function ladderRun(plan: LadderPlan, kind: ServerKind, rep: number): Promise<LadderRun> {
  const server = await startServer(kind, plan.topology);
  const steps: LadderStep[] = [];
  try {
    await connectAll(kind, [server], plan.topology, 0, plan.topology.connections);
    for (const rate of plan.rates) {
      const run = await runLoad(server, rate, { ...plan, split: false });
      if (!server.child.alive) throw new Error(`the ${SERVER_LABEL[kind]} server exited during the ladder (see its output above)`);
      const d = derive(run);
      countWindow(run, d, false);
      const reasons = [
        d.lossRatio > plan.criteria.maxLossRatio ? `loss ${fmt(d.lossRatio * 100)}%` : '',
        run.latency.p99Ms > plan.criteria.maxP99Ms ? `p99 ${fmt(run.latency.p99Ms)} ms` : '',
        run.dropped > 0 ? `${run.dropped} connections dropped` : '',
        run.sentRate < rate * plan.criteria.minSentRatio ? `load generator sent ${fmt(run.sentRate)}/s` : '',
      ].filter(Boolean);
      steps.push({
        rate,
        deliveriesPerS: d.deliveriesPerS,
        sentRate: run.sentRate,
        p50Ms: run.latency.p50Ms,
        p99Ms: run.latency.p99Ms,
        maxMs: run.latency.maxMs,
        lossRatio: d.lossRatio,
        userUsPerDelivery: d.userUsPerDelivery,
        totalUsPerDelivery: d.totalUsPerDelivery,
        serverCpuPct: d.serverCpuPct,
        loadgenCpuPct: d.loadgenCpuPct,
        otherCpuPct: d.otherCpuPct,
        sustained: reasons.length === 0,
        reason: reasons.length === 0 ? undefined : reasons.join(', '),
      });
      // A step missed on latency alone does not end the climb unless latency really blew up: the steps above
      // still tell whether messages are lost (a target), and a noisy window may have caused the miss.
      const stop = d.lossRatio > plan.criteria.maxLossRatio || run.latency.p99Ms > plan.criteria.stopP99Ms || run.dropped > 0 || run.sentRate < rate * plan.criteria.minSentRatio;
      const verdict = reasons.length === 0 ? '' : stop ? `  -> not sustained, stops: ${reasons.join(', ')}` : `  -> not sustained: ${reasons.join(', ')}`;
      progress(`ladder ${String(rate).padStart(5)}/s rep ${rep + 1}/${plan.reps} ${SERVER_LABEL[kind].padEnd(9)} ${describeRun(run, d)}${verdict}`);
      if (stop) {
        // Count the skipped steps as done, so the progress total stays right.
        stepsDone += plan.rates.length - plan.rates.indexOf(rate) - 1;
        break;
      }
    }
  } finally {
    await teardown(server);
  }
  let best = 0;
  for (const step of steps) if (step.sustained) best = Math.max(best, step.deliveriesPerS);
  return { server: kind, rep, steps, maxSustainedDeliveriesPerS: best };
}

async function ladderScenario(plan: LadderPlan): Promise<LadderResult> {
  const runsDone: LadderRun[] = [];
  for (let rep = 0; rep < plan.reps; rep++) for (const kind of servers) runsDone.push(await ladderRun(plan, kind, rep));
  const summary: LadderResult['summary'] = {};
  for (const kind of servers) {
    const mine = runsDone.filter((r) => r.server === kind);
    if (mine.length === 0) continue;
    const curve = plan.rates.flatMap((rate) => {
      const at = mine.flatMap((r) => r.steps.filter((s) => s.rate === rate));
      if (at.length === 0) return [];
      return [
        {
          rate,
          deliveriesPerS: median(at.map((s) => s.deliveriesPerS)),
          p99Ms: median(at.map((s) => s.p99Ms)),
          lossRatio: median(at.map((s) => s.lossRatio)),
          reached: at.length,
          sustained: at.filter((s) => s.sustained).length,
        },
      ];
    });
    summary[kind] = { maxSustainedDeliveriesPerS: median(mine.map((r) => r.maxSustainedDeliveriesPerS)), curve };
  }
  return { ...plan, runs: runsDone, summary };
}

async function idleStep(plan: IdlePlan, kind: ServerKind, rep: number): Promise<IdleStep> {
  const topology: Topology = { connections: plan.connections, roomSize: plan.roomSize };
  const server = await startServer(kind, topology);
  try {
    const firstConnect = await connectAll(kind, [server], topology, 0, plan.first);
    await sleep(plan.settleMs / 2);
    const before = await server.child.request<MemoryReport>({ cmd: 'memory' }, 30_000);
    const cpu0 = readProcessCpu(server.pid);
    const rest = await connectAll(kind, [server], topology, plan.first, plan.connections);
    const cpu1 = readProcessCpu(server.pid);
    await sleep(plan.settleMs);
    const after = await server.child.request<MemoryReport>({ cmd: 'memory' }, 30_000);
    const n = after.connections - before.connections;
    if (after.connections !== plan.connections) {
      notes.push(`${SERVER_LABEL[kind]} idle rep ${rep + 1}: the server counted ${after.connections} connections, not ${plan.connections}`);
    }
    const per = (get: (m: MemoryReport) => number): number => (n > 0 ? (get(after) - get(before)) / n : Number.NaN);
    const opened = Math.max(1, rest.connected);
    const step: IdleStep = {
      server: kind,
      rep,
      connections: after.connections,
      first: before.connections,
      before,
      after,
      perConnection: { rss: per((m) => m.rss), heapUsed: per((m) => m.heapUsed), external: per((m) => m.external), arrayBuffers: per((m) => m.arrayBuffers) },
      connectMs: rest.ms,
      connectUserUs: cpu0 && cpu1 ? ((cpu1.userMs - cpu0.userMs) * 1000) / opened : Number.NaN,
      connectSystemUs: cpu0 && cpu1 ? ((cpu1.systemMs - cpu0.systemMs) * 1000) / opened : Number.NaN,
      failed: firstConnect.failed + rest.failed,
    };
    progress(
      `idle        rep ${rep + 1}/${plan.reps} ${SERVER_LABEL[kind].padEnd(9)} ${after.connections} conns  RSS ${fmt(step.perConnection.rss / 1024)} KiB/conn  heap ${fmt(step.perConnection.heapUsed / 1024)} KiB/conn  connect ${fmt(step.connectUserUs + step.connectSystemUs)} µs cpu/conn, ${fmt((rest.connected * 1000) / rest.ms)} conns/s`,
    );
    return step;
  } finally {
    await teardown(server);
  }
}

async function idleScenario(plan: IdlePlan): Promise<IdleResult> {
  const steps: IdleStep[] = [];
  for (let rep = 0; rep < plan.reps; rep++) for (const kind of servers) steps.push(await idleStep(plan, kind, rep));
  const summary: IdleResult['summary'] = {};
  for (const kind of servers) {
    const mine = steps.filter((s) => s.server === kind);
    if (mine.length === 0) continue;
    const value: IdleSummary = {
      runs: mine.length,
      rssPerConn: median(mine.map((s) => s.perConnection.rss)),
      heapPerConn: median(mine.map((s) => s.perConnection.heapUsed)),
      externalPerConn: median(mine.map((s) => s.perConnection.external)),
      connectUserUs: median(mine.map((s) => s.connectUserUs)),
      connectSystemUs: median(mine.map((s) => s.connectSystemUs)),
      connectsPerS: median(mine.map((s) => ((s.connections - s.first) * 1000) / s.connectMs)),
    };
    summary[kind] = value;
  }
  return { ...plan, scaledDown: scaledDownReason, steps, summary };
}

// ---------------------------------------------------------------- cluster

/** Redis as the cluster scenario uses it, once it answered. */
interface RedisContext {
  config: RedisConfig;
  /** The redis-server process, for its CPU; null when /proc does not show it. */
  pid: number | null;
  /** The seq counters of the scenario's rooms. */
  seqKeys: string[];
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * derive() for several server processes and Redis: "other" leaves the redis-server process
 * out too. Redis figures are per publish accepted in the window: on Redis, those Redis
 * sequenced (the growth of the rooms' seq counters, read atomically with the command
 * counts); alone, the acks.
 */
function deriveCluster(run: RunResult, setup: ClusterSetup): ClusterDerived {
  const base = derive(run);
  const pct = (ms: number): number => (100 * ms) / run.windowMs;
  const redisMs = run.redis?.cpu ? run.redis.cpu.userMs + run.redis.cpu.systemMs : null;
  const serverMs = run.server.userMs + run.server.systemMs;
  const loadgenMs = run.loadgen.userMs + run.loadgen.systemMs;
  const accepted = setup === 'redis' ? (run.redis?.sequenced ?? 0) : run.acks;
  const perBroadcast = (count: number | undefined): number | null => (count === undefined || accepted <= 0 ? null : count / accepted);
  return {
    ...base,
    redisCpuPct: redisMs === null ? null : pct(redisMs),
    redisUsPerDelivery: redisMs === null || run.received === 0 ? null : (redisMs * 1000) / run.received,
    otherCpuPct: Math.max(0, pct(run.machine.busyMs - serverMs - loadgenMs - (redisMs ?? 0))),
    accepted,
    redisPublishesPerBroadcast: perBroadcast(run.redis?.publishCalls),
    redisCommandsPerBroadcast: perBroadcast(run.redis?.totalCalls),
    acksPerBroadcast: perBroadcast(run.acks),
  };
}

function describeClusterRun(run: RunResult, d: ClusterDerived): string {
  const extra = [
    run.errors > 0 ? `${run.errors} errors (${run.firstError ?? ''})` : '',
    run.dropped > 0 ? `${run.dropped} dropped` : '',
    run.sentRate < run.rate * 0.95 ? `load gen. sent only ${fmt(run.sentRate)}/s` : '',
    run.redisError !== undefined ? `no Redis figures (${run.redisError})` : '',
    (run.redis?.foreignClients ?? 0) > 0 ? `${run.redis?.foreignClients ?? 0} other Redis clients connected` : '',
  ].filter(Boolean);
  const n = (v: number | null, digits = 3): string => (v === null ? '–' : fmt(v, digits));
  return (
    `${fmt(d.deliveriesPerS).padStart(6)} del/s  user ${fmt(d.userUsPerDelivery).padStart(5)} µs (main thread ${fmt(d.mainThreadUserUsPerDelivery).padStart(5)})  sys ${fmt(d.systemUsPerDelivery).padStart(5)} µs` +
    `  p50 ${fmt(run.latency.p50Ms)} p99 ${fmt(run.latency.p99Ms)} ms  loss ${fmt(d.lossRatio * 100)}%` +
    `  Redis: ${n(d.redisPublishesPerBroadcast)} publish, ${n(d.redisCommandsPerBroadcast)} cmds per broadcast` +
    `  (cpu: servers ${fmt(d.serverCpuPct, 2)}%, redis ${n(d.redisCpuPct, 2)}%, load gen. ${fmt(d.loadgenCpuPct, 2)}%, other ${fmt(d.otherCpuPct, 2)}%)` +
    (extra.length > 0 ? `  ${extra.join(', ')}` : '') +
    (d.otherCpuPct > NOISY_PCT ? '  [noisy]' : '')
  );
}

/** One measured window over every process of a setup, with Redis's counters around it. */
function runCluster(on: RunningServer[], rate: number, plan: ClusterPlan, redis: RedisContext): Promise<RunResult> {
  const request: RunRequest = {
    cmd: 'run',
    rate,
    warmupMs: plan.warmupMs,
    measureMs: plan.measureMs,
    drainMs: plan.drainMs,
    step: ++stepNumber,
    serverPids: on.map((server) => server.pid),
    redis: { url: redis.config.url, pid: redis.pid, seqKeys: redis.seqKeys },
    perf: splitMode === 'perf' ? 'split' : undefined,
  };
  return lg().request<RunResult>(request, plan.warmupMs + plan.measureMs + plan.drainMs + 60_000);
}

/**
 * One setup: start its processes, connect every connection round-robin over them, measure
 * each rate on the same connections, stop. No window is measured again when the machine
 * was busy (it is flagged): the scenario's time stays bounded.
 */
async function clusterSetup(plan: ClusterPlan, setup: ClusterSetup, rep: number, redis: RedisContext, into: ClusterStep[]): Promise<void> {
  const processes = setup === 'single' ? 1 : plan.processes;
  const label = setupLabel(setup, processes);
  const topologyArg = JSON.stringify(plan.topology);
  const started = await Promise.allSettled(
    Array.from({ length: processes }, (_, i) =>
      setup === 'single'
        ? startServer('roomwire', plan.topology)
        : startChild('roomwire-redis', `roomwire-redis server ${i + 1}/${processes}`, [topologyArg, JSON.stringify(redis.config)]),
    ),
  );
  const on = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  try {
    const failed = started.find((result) => result.status === 'rejected');
    if (failed) throw failed.reason;
    const connect = await connectAll('roomwire', on, plan.topology, 0, plan.topology.connections);
    const connectionsPerProcess = await Promise.all(
      on.map((server) => server.child.request<MemoryReport>({ cmd: 'memory' }, 30_000).then((m) => m.connections, () => Number.NaN)),
    );
    for (const rate of plan.rates) {
      const run = await runCluster(on, rate, plan, redis);
      const dead = on.find((server) => !server.child.alive);
      if (dead) throw new Error(`${dead.child.name} exited during the cluster scenario (see its output above)`);
      const derived = deriveCluster(run, setup);
      countWindow(run, derived);
      into.push({ setup, processes, rate, rep, connect, connectionsPerProcess, run, derived });
      progress(`cluster ${label.padEnd(21)} ${String(rate).padStart(5)}/s rep ${rep + 1}/${plan.reps} ${describeClusterRun(run, derived)}`);
    }
  } finally {
    // The servers go first (their TIME_WAIT sockets on their side), then the clients, then the run's keys.
    await Promise.all(on.map((server) => server.child.stop()));
    await lg().request({ cmd: 'close' }, 30_000);
  }
}

/** A median of the values that are known; null when none is. */
function medianOrNull(values: readonly (number | null)[]): number | null {
  const known = values.filter((v): v is number => v !== null && Number.isFinite(v));
  return known.length === 0 ? null : median(known);
}

function summarizeCluster(plan: ClusterPlan, steps: ClusterStep[]): ClusterSummary[] {
  const out: ClusterSummary[] = [];
  for (const setup of ['single', 'redis'] as const) {
    for (const rate of plan.rates) {
      const mine = steps.filter((s) => s.setup === setup && s.rate === rate);
      const first = mine[0];
      if (!first) continue;
      const names = [...new Set(mine.flatMap((s) => Object.keys(s.run.redis?.calls ?? {})))];
      const commands = names
        .map((name): [string, number | null] => [name, medianOrNull(mine.map((s) => (s.run.redis && s.derived.accepted > 0 ? (s.run.redis.calls[name] ?? 0) / s.derived.accepted : null)))])
        .filter((entry): entry is [string, number] => entry[1] !== null)
        .sort((a, b) => b[1] - a[1]);
      out.push({
        ...loadFigures(mine),
        setup,
        processes: first.processes,
        rate,
        redisCpuPct: medianOrNull(mine.map((s) => s.derived.redisCpuPct)),
        redisUsPerDelivery: medianOrNull(mine.map((s) => s.derived.redisUsPerDelivery)),
        redisPublishesPerBroadcast: medianOrNull(mine.map((s) => s.derived.redisPublishesPerBroadcast)),
        redisCommandsPerBroadcast: medianOrNull(mine.map((s) => s.derived.redisCommandsPerBroadcast)),
        acksPerBroadcast: medianOrNull(mine.map((s) => s.derived.acksPerBroadcast)),
        commandsPerBroadcast: Object.fromEntries(commands),
      });
    }
  }
  return out;
}

function compareCluster(plan: ClusterPlan, summary: ClusterSummary[]): ClusterComparison[] {
  return plan.rates.flatMap((rate) => {
    const single = summary.find((s) => s.setup === 'single' && s.rate === rate);
    const redis = summary.find((s) => s.setup === 'redis' && s.rate === rate);
    if (!single || !redis) return [];
    return [
      {
        rate,
        deliveriesRatio: ratio(redis.deliveriesPerS, single.deliveriesPerS),
        p99DiffMs: redis.p99Ms - single.p99Ms,
        p99Ratio: ratio(redis.p99Ms, single.p99Ms),
        serverCpuRatio: ratio(redis.totalUsPerDelivery, single.totalUsPerDelivery),
      },
    ];
  });
}

function ioredisVersion(): string {
  return version('node_modules/ioredis/package.json');
}

/**
 * roomwire alone against `plan.processes` roomwire processes on one Redis, at each rate,
 * on the same machine in the same run. Skipped (with the reason) when Redis does not
 * answer; every key the processes wrote (one prefix per run) is deleted afterwards, also
 * when the run is cut short.
 */
async function clusterScenario(plan: ClusterPlan): Promise<ClusterResult> {
  const began = Date.now();
  const stepsPlanned = plan.reps * 2 * plan.rates.length;
  const result: ClusterResult = {
    description: plan.description,
    topology: plan.topology,
    processes: plan.processes,
    rates: plan.rates,
    reps: plan.reps,
    warmupMs: plan.warmupMs,
    measureMs: plan.measureMs,
    drainMs: plan.drainMs,
    durationS: 0,
    skipped: undefined,
    failed: undefined,
    redis: undefined,
    steps: [],
    summary: [],
    comparison: [],
    notes: [],
  };
  const skip = (reason: string): ClusterResult => {
    console.warn(`  ! cluster scenario skipped: ${reason}`);
    stepsTotal -= stepsPlanned;
    return { ...result, skipped: reason, durationS: (Date.now() - began) / 1000 };
  };
  let probe: Redis;
  try {
    probe = await openProbeClient(redisUrl);
  } catch (error) {
    return skip(`Redis at ${redisUrl} is not reachable (${errorMessage(error)})`);
  }
  const prefix = runPrefix();
  let keysDeleted = 0;
  const cleanup = async (): Promise<void> => {
    keysDeleted += await deletePrefix(probe, prefix);
  };
  cleanups.add(cleanup);
  try {
    const server = await describeRedis(probe, redisUrl).catch((error: unknown) => errorMessage(error));
    if (typeof server === 'string') return skip(`Redis at ${redisUrl} did not answer INFO (${server})`);
    if (Number.parseInt(server.version, 10) < 7) return skip(`Redis at ${redisUrl} is version ${server.version}; the backplane needs 7 or later`);
    if (server.pid === null) {
      const note = `redis-server's CPU is not reported: ${server.pidNote ?? 'unknown process'}`;
      console.warn(`  ! ${note}`);
      result.notes.push(note);
    }
    const rooms = Array.from({ length: roomCount(plan.topology) }, (_, i) => roomName(i));
    const redis: RedisContext = { config: { url: redisUrl, prefix }, pid: server.pid, seqKeys: rooms.map((room) => seqKey(prefix, room)) };
    result.redis = { url: redisUrl, version: server.version, ioredis: ioredisVersion(), pid: server.pid, pidNote: server.pidNote, prefix, keysDeleted: 0, keysLeft: null };
    try {
      for (let rep = 0; rep < plan.reps; rep++) {
        // Alternation, and the other order on odd reps: drift in the machine's load spreads over both setups.
        const order: ClusterSetup[] = rep % 2 === 0 ? ['single', 'redis'] : ['redis', 'single'];
        for (const setup of order) {
          try {
            await clusterSetup(plan, setup, rep, redis, result.steps);
          } finally {
            // Each setup on Redis starts from empty keys.
            if (setup === 'redis') await cleanup();
          }
        }
      }
    } catch (error) {
      result.failed = errorMessage(error);
      console.warn(`  ! the cluster scenario stopped: ${result.failed}`);
      // The steps it did not get to, out of the progress total.
      stepsTotal -= stepsPlanned - result.steps.length;
    }
    await cleanup();
    const left = await countPrefix(probe, prefix);
    result.redis = { ...result.redis, keysDeleted, keysLeft: left };
    if (left > 0) result.notes.push(`${left} keys under ${prefix}: were still in Redis at the end`);
    const foreign = Math.max(0, ...result.steps.map((s) => s.run.redis?.foreignClients ?? 0));
    if (foreign > 0) {
      result.notes.push(
        `up to ${foreign} Redis client(s) that are not the benchmark's were connected during the windows: INFO commandstats counts their commands too (the seq counters do not)`,
      );
    }
    result.summary = summarizeCluster(plan, result.steps);
    result.comparison = compareCluster(plan, result.summary);
    return { ...result, durationS: (Date.now() - began) / 1000 };
  } finally {
    cleanups.delete(cleanup);
    await closeProbeClient(probe);
  }
}

function printCluster(cluster: ClusterResult): void {
  if (cluster.skipped !== undefined) {
    console.log(`\ncluster scenario: skipped (${cluster.skipped})`);
    return;
  }
  const n = (v: number | null, digits = 3): string => (v === null ? '–' : fmt(v, digits));
  console.log(`\ncluster scenario (${fmt(cluster.durationS)} s; medians of ${cluster.reps} rep(s)):`);
  for (const s of cluster.summary) {
    console.log(
      `  ${setupLabel(s.setup, s.processes).padEnd(21)} ${String(s.rate).padStart(5)}/s  ${fmt(s.deliveriesPerS).padStart(6)} del/s  loss ${fmt(s.lossRatio * 100)}%` +
        `  p50 ${fmt(s.p50Ms)} p99 ${fmt(s.p99Ms)} max ${fmt(s.maxMs)} ms  servers ${fmt(s.userUsPerDelivery)} + ${fmt(s.systemUsPerDelivery)} µs/delivery` +
        `  redis-server ${n(s.redisCpuPct, 2)}% cpu  publishes/broadcast ${n(s.redisPublishesPerBroadcast)}  commands/broadcast ${n(s.redisCommandsPerBroadcast)}`,
    );
  }
  for (const c of cluster.comparison) {
    console.log(
      `  at ${c.rate}/s: deliveries/s ${cluster.processes} on Redis / 1 alone ${fmtRatio(c.deliveriesRatio)}, p99 ${c.p99DiffMs >= 0 ? '+' : ''}${fmt(c.p99DiffMs)} ms (${fmtRatio(c.p99Ratio)}), server CPU per delivery ${fmtRatio(c.serverCpuRatio)}`,
    );
  }
  for (const note of cluster.notes) console.log(`  ! ${note}`);
  if (cluster.failed !== undefined) console.log(`  ! stopped early: ${cluster.failed}`);
}

// ---------------------------------------------------------------- meta

function version(packageJson: string): string {
  try {
    return (JSON.parse(readFileSync(join(ROOT, packageJson), 'utf8')) as { version: string }).version;
  } catch {
    return '?';
  }
}

function machine(): Meta['machine'] {
  const info = cpus();
  return {
    cpus: info.length,
    model: (info[0]?.model ?? 'unknown CPU').replace(/\s+/g, ' ').trim(),
    node: process.version,
    platform: platform(),
    kernel: release(),
    memoryGiB: Math.round(totalmem() / 2 ** 30),
  };
}

function source(): string {
  const base = baseDir === undefined ? '' : `, against roomwire (base) from the source directory given with --base (${baseDir.split('/').pop() ?? baseDir})`;
  return sourceOfRoomwire() + base;
}

function sourceOfRoomwire(): string {
  const other = option('src');
  if (other !== undefined) return `the source directory given with --src (${other.split('/').pop() ?? other})`;
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
    return dirty ? `commit ${commit} with uncommitted changes in src/` : `commit ${commit}`;
  } catch {
    return 'unknown';
  }
}

/** Other processes' CPU, in % of one core, above which a measured window counts as noisy. */
const NOISY_PCT = 50;
const windows = { noisy: 0, all: 0, procSplit: 0 };
function countWindow(run: RunResult, d: { otherCpuPct: number }, splitAsked = true): void {
  windows.all++;
  if (d.otherCpuPct > NOISY_PCT) windows.noisy++;
  if (splitAsked && run.split === 'proc') windows.procSplit++;
}

/** How the servers' CPU time was split into user and system time, for the results. */
function cpuSplitNote(): string {
  if (splitMode === 'proc') return "/proc's (the kernel's tick-based split)";
  const fallback = windows.procSplit > 0 ? `; ${windows.procSplit} of ${windows.all} windows had too few samples and kept /proc's` : '';
  return `perf samples of each small-rooms, big-room and cluster window (${SPLIT_FREQUENCY} a second per thread), applied to the scheduler's count of their time on a CPU${fallback}; the ladder's, which report no CPU, /proc's`;
}

const command = `npm run bench${args.length > 0 ? ` -- ${args.join(' ')}` : ''}`;

// ---------------------------------------------------------------- profile mode

async function profile(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'roomwire-cpuprof-'));
  const measureMs = quick ? 4_000 : 10_000;
  // Small rooms weigh the per-publish work (decode, seq, ack); the big room the per-recipient loop.
  const plans: LoadPlan[] = [small, big]
    .filter((plan) => only === undefined || only.includes(plan === small ? 'small' : 'big'))
    .map((plan) => ({ ...plan, reps: 1, warmupMs: 2_000, measureMs, drainMs: 3_000 }));
  stepsTotal = servers.length * plans.length;
  const profiles: ProfileResults['profiles'] = [];
  for (const plan of plans) {
    for (const kind of servers) {
      const out = mkdtempSync(join(dir, `${kind}-`));
      const step = await loadStep(plan, kind, 0, ['--cpu-prof', `--cpu-prof-dir=${out}`, '--cpu-prof-interval=500']);
      // Every thread writes a profile (under --tsx, its module hooks run on a worker); the server's work is on the
      // main thread, id 0: CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile
      const file = readdirSync(out).find((f) => f.split('.')[4] === '0');
      if (!file) {
        console.warn(`  ! no main-thread profile written for ${kind}`);
        continue;
      }
      const raw = JSON.parse(readFileSync(join(out, file), 'utf8')) as Parameters<typeof summarizeProfile>[1];
      const window = step.run.windowUs;
      const inside = window.start >= raw.startTime && window.end <= raw.startTime + raw.timeDeltas.reduce((a, b) => a + b, 0);
      if (!inside) console.warn('  ! the measured window is not inside the profile (clocks differ?); summarizing the whole profile');
      const summary = summarizeProfile(kind, raw, inside ? window : undefined);
      profiles.push({
        ...summary,
        scenario: plan.name,
        deliveries: step.run.received,
        serverUserMs: step.run.server.userMs,
        serverSystemMs: step.run.server.systemMs,
      });
      console.log(`\n  ${plan.name}, ${SERVER_LABEL[kind]}: ${fmt(summary.busyMs)} ms busy of ${fmt(summary.sampledMs)} ms sampled`);
      for (const c of summary.categories) console.log(`    ${c.category.padEnd(36)} ${c.pct.toFixed(1).padStart(5)}%`);
      console.log('    top self time:');
      for (const r of summary.self.slice(0, 15)) console.log(`      ${r.pct.toFixed(1).padStart(5)}%  ${r.fn}  ${r.where}  [${r.category}]`);
      if (summary.inclusive.length > 0) {
        console.log('    roomwire inclusive:');
        for (const r of summary.inclusive.slice(0, 12)) console.log(`      ${r.pct.toFixed(1).padStart(5)}%  ${r.fn}  ${r.where}`);
      }
      console.log('');
    }
  }
  console.log(`raw profiles (open in Chrome DevTools > Performance): ${dir}`);
  const results: ProfileResults = {
    date: new Date().toISOString(),
    command,
    machine: machine(),
    runner: useTsx ? 'TypeScript under tsx (--tsx)' : 'esbuild bundles of the TypeScript sources (bench/lib/build.ts)',
    source: measuredSource,
    scenario: plans.map((plan) => `${plan.name}: ${plan.description}`).join('; ') + `; ${measureMs / 1000} s measured each`,
    profiles,
  };
  const base = only !== undefined || servers.length !== ALL_SERVERS.length || quick ? 'profile-partial' : 'profile';
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(join(ROOT, `bench/results/${base}.json`), `${JSON.stringify(results, null, 2)}\n`);
  console.log(`wrote bench/results/${base}.json`);
  if (base === 'profile' || flag('docs')) {
    const docPath = join(ROOT, 'docs/benchmarks.md');
    const doc = readFileSync(docPath, 'utf8');
    writeFileSync(docPath, replaceSection(doc, 'profile', profileMarkdown(results)));
    console.log('updated the profile section of docs/benchmarks.md');
  }
}

// ---------------------------------------------------------------- main

let scaledDownReason: string | undefined;
/** What was measured: taken before the build, as the source may change while the run goes on. */
let measuredSource = 'unknown';

async function main(): Promise<void> {
  measuredSource = source();
  if (!useTsx) {
    const started = Date.now();
    scripts = await buildEntries(option('src'), baseDir);
    console.log(`built the servers and the load generator with esbuild in ${Date.now() - started} ms`);
  }
  const perfReason = perfUnavailable();
  if (perfMode && perfReason) throw new Error(`--perf: ${perfReason}`);
  const callgrindReason = callgrindMode ? callgrindUnavailable() : undefined;
  if (callgrindReason) throw new Error(`--callgrind: ${callgrindReason}`);
  if (splitMode === 'perf' && perfReason) {
    splitMode = 'proc';
    const splitNote = `user/system split from /proc (tick-sampled, can be biased; see docs/benchmarks.md): ${perfReason}`;
    console.warn(`  ! ${splitNote}`);
    notes.push(splitNote);
  }
  loadgen = new ChildHandle(scripts.loadgen, [], { name: 'load generator', nodeFlags: runnerFlags });
  const { fdLimit } = await loadgen.waitEvent<{ fdLimit: number | null }>('ready', 30_000);
  if (profileMode) {
    await profile();
    return;
  }
  const needed = idlePlan.connections + 256;
  if (runs('idle') && fdLimit !== null && fdLimit < needed) {
    const scaled = Math.max(1_000, Math.floor((fdLimit - 256) / 1_000) * 1_000);
    scaledDownReason = `the open-files limit is ${fdLimit} (ulimit -n, after raising it to the hard limit), too low for ${idlePlan.connections} connections; measured ${scaled}`;
    console.warn(`  ! ${scaledDownReason}`);
    idlePlan.connections = scaled;
    idlePlan.first = Math.floor(scaled / 10);
  }
  const loadAverageAtStart = loadavg();
  const perServer = servers.length;
  const smallPlan = callgrindMode ? forCallgrind(small) : small;
  const bigPlan = callgrindMode ? forCallgrind(big) : big;
  stepsTotal =
    (runs('small') ? smallPlan.reps * perServer : 0) +
    (runs('big') ? bigPlan.reps * perServer : 0) +
    (runs('ladder') ? ladderPlan.reps * perServer * ladderPlan.rates.length : 0) +
    (runs('idle') ? idlePlan.reps * perServer : 0) +
    (runs('cluster') ? clusterPlan.reps * 2 * clusterPlan.rates.length : 0);
  console.log(
    `roomwire benchmark (${quick ? 'quick' : 'full'}): ${servers.map((s) => SERVER_LABEL[s]).join(', ')} on ${cpus().length} cores, Node ${process.version}; load average ${loadAverageAtStart.map((v) => v.toFixed(2)).join(' ')}`,
  );
  if (cpus().length <= 2) console.log('  (on 2 cores the server and the load generator share the machine; compare ratios, not absolute figures)');

  const smallResult = runs('small') ? await loadScenario(smallPlan) : undefined;
  const bigResult = runs('big') ? await loadScenario(bigPlan) : undefined;
  const ladderResult = runs('ladder') ? await ladderScenario(ladderPlan) : undefined;
  const idleResult = runs('idle') ? await idleScenario(idlePlan) : undefined;
  const clusterResult = runs('cluster') ? await clusterScenario(clusterPlan) : undefined;

  if (aborting) {
    console.error('the run was stopped: no results written');
    return;
  }
  reportPerf();
  reportCallgrind();
  const partial = perfMode || callgrindMode || option('src') !== undefined || baseDir !== undefined || serverFlags.length > 0 || warmupOverride !== undefined || measureOverride !== undefined || only !== undefined || servers.length !== ALL_SERVERS.length || !ALL_SERVERS.every((s) => servers.includes(s));
  const scenarios = { small: smallResult, big: bigResult, ladder: ladderResult, idle: idleResult };
  /** The scenarios of the results section (all but the cluster one, which has its own files and section). */
  // Under --callgrind the servers' times and latencies are Valgrind's: only the instruction counts are written.
  const classic = !callgrindMode && Object.values(scenarios).some((scenario) => scenario !== undefined);
  const meta: Meta = {
    date: new Date().toISOString(),
    mode: partial ? 'partial' : quick ? 'quick' : 'full',
    command,
    durationS: (Date.now() - startedAt) / 1000,
    machine: machine(),
    versions: { roomwire: version('package.json'), ws: version('node_modules/ws/package.json'), socketio: version('node_modules/socket.io/package.json') },
    runner: useTsx ? 'TypeScript under tsx (--tsx)' : 'esbuild bundles of the TypeScript sources (bench/lib/build.ts)',
    source: measuredSource,
    noisy: { windows: windows.noisy, of: windows.all, thresholdPct: NOISY_PCT, remeasured: retries },
    cpuSplit: cpuSplitNote(),
    loadAverageAtStart,
    notes,
  };
  const results: Results = {
    meta,
    ...scenarios,
    cluster: clusterResult,
    headline: headline(scenarios),
    targets: targets(scenarios),
  };
  const base = partial ? 'partial' : quick ? 'quick' : 'full';
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  if (classic) {
    writeFileSync(join(ROOT, `bench/results/${base}.json`), `${JSON.stringify(results, null, 2)}\n`);
    writeFileSync(join(ROOT, `bench/results/${base}.svg`), chartSvg(results));
    console.log(`\nwrote bench/results/${base}.json and bench/results/${base}.svg`);

    console.log('\nheadline (lower is better, ↑ higher is better):');
    for (const r of results.headline) {
      const f = (v: number): string => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '–').padStart(7);
      console.log(`  ${(r.metric + (r.higherIsBetter ? ' ↑' : '')).padEnd(48)} roomwire/bare ${f(r.roomwireVsBare)}  Socket.IO/bare ${f(r.socketioVsBare)}  roomwire/Socket.IO ${f(r.roomwireVsSocketio)}`);
    }
    console.log('\ntargets of issue 7:');
    for (const t of results.targets) console.log(`  ${t.met === undefined ? '?' : t.met ? 'met' : 'NOT met'}  ${t.target}: ${t.measured}`);
    const againstBase = baseComparison(scenarios);
    if (againstBase.length > 0) {
      console.log('\nroomwire against roomwire (base), medians (below 1.0× is cheaper than the base):');
      for (const line of againstBase) console.log(`  ${line}`);
    }
  }

  // The cluster scenario also has a file of its own, so a run of it alone (--only=cluster) replaces no other results.
  const measuredCluster = clusterResult !== undefined && clusterResult.skipped === undefined && clusterResult.steps.length > 0 ? clusterResult : undefined;
  const clusterFile = `bench/results/cluster${quick ? '-quick' : ''}.json`;
  if (clusterResult) printCluster(clusterResult);
  if (measuredCluster) {
    const file: ClusterResults = { meta, cluster: measuredCluster };
    writeFileSync(join(ROOT, clusterFile), `${JSON.stringify(file, null, 2)}\n`);
    console.log(`wrote ${clusterFile}`);
  }

  if ((!quick && !partial) || flag('docs')) {
    const docPath = join(ROOT, 'docs/benchmarks.md');
    let doc = readFileSync(docPath, 'utf8');
    const updated: string[] = [];
    if (classic) {
      doc = replaceSection(doc, 'results', resultsMarkdown(results, `../bench/results/${base}.svg`));
      updated.push('results');
    }
    if (measuredCluster) {
      doc = replaceSection(doc, 'cluster', clusterMarkdown(meta, measuredCluster, `../${clusterFile}`));
      updated.push('cluster');
    } else if (clusterResult) {
      console.log('the cluster section of docs/benchmarks.md is left as it was: the scenario measured nothing');
    }
    if (updated.length > 0) {
      writeFileSync(docPath, doc);
      console.log(`updated the ${updated.join(' and ')} section${updated.length > 1 ? 's' : ''} of docs/benchmarks.md`);
    }
  }
  console.log(`done in ${elapsed()}`);
}

try {
  await main();
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  await loadgen?.stop(2_000).catch(() => {});
  killAllChildren();
  clearTimeout(runLimit);
}
