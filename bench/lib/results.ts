import type { MemoryReport } from '../servers/harness.js';
import type { ConnectResult, RunResult, ServerKind } from '../loadgen.js';
import type { ProfileSummary } from './cpuprofile.js';
import type { Topology } from './topology.js';

export type { ServerKind };

export const SERVER_LABEL: Record<ServerKind, string> = { roomwire: 'roomwire', bare: 'bare ws', socketio: 'Socket.IO', preframed: 'bare, pre-framed', 'bare-ack': 'bare ws + ack', 'roomwire-base': 'roomwire (base)' };

/** Figures computed from one load run. */
export interface Derived {
  deliveriesPerS: number;
  userUsPerDelivery: number;
  /** The user CPU of the servers' main threads alone, per delivery: the rest is V8's and libuv's helper threads. */
  mainThreadUserUsPerDelivery: number;
  systemUsPerDelivery: number;
  totalUsPerDelivery: number;
  /** Server CPU over the window, in % of one core. */
  serverCpuPct: number;
  loadgenCpuPct: number;
  /** Everything else on the machine (other processes), in % of one core. */
  otherCpuPct: number;
  lossRatio: number;
}

export interface LoadStep {
  server: ServerKind;
  rep: number;
  connect: ConnectResult;
  run: RunResult;
  derived: Derived;
  /** The server's memory right after the run (after a GC). */
  memoryAfter: MemoryReport | undefined;
}

/** What every load run reports, as medians of its reps (loss, errors and drops: all reps together). */
export interface LoadFigures {
  runs: number;
  deliveriesPerS: number;
  userUsPerDelivery: number;
  mainThreadUserUsPerDelivery: number;
  systemUsPerDelivery: number;
  totalUsPerDelivery: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Lost over expected, all reps together. */
  lossRatio: number;
  serverCpuPct: number;
  loadgenCpuPct: number;
  otherCpuPct: number;
  errors: number;
  dropped: number;
}

export interface LoadSummary extends LoadFigures {
  /** The server's heap and RSS right after the run, after a GC (history and caches included). */
  heapAfterMiB: number;
  rssAfterMiB: number;
}

/** What a load scenario (small rooms, big room) runs. */
export interface LoadPlan {
  name: string;
  description: string;
  topology: Topology;
  rate: number;
  reps: number;
  warmupMs: number;
  measureMs: number;
  drainMs: number;
}

export interface LoadScenarioResult extends Omit<LoadPlan, 'drainMs'> {
  steps: LoadStep[];
  summary: Partial<Record<ServerKind, LoadSummary>>;
}

export interface LadderStep {
  rate: number;
  deliveriesPerS: number;
  sentRate: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  lossRatio: number;
  userUsPerDelivery: number;
  totalUsPerDelivery: number;
  serverCpuPct: number;
  loadgenCpuPct: number;
  otherCpuPct: number;
  sustained: boolean;
  /** Why the step counts as not sustained. */
  reason: string | undefined;
}

export interface LadderRun {
  server: ServerKind;
  rep: number;
  steps: LadderStep[];
  /** Deliveries/s of the highest sustained step; 0 when none was. */
  maxSustainedDeliveriesPerS: number;
}

export interface LadderPoint {
  rate: number;
  deliveriesPerS: number;
  p99Ms: number;
  lossRatio: number;
  /** Runs that reached this step, and of them, runs that sustained it. */
  reached: number;
  sustained: number;
}

export interface LadderResult {
  topology: Topology;
  rates: number[];
  reps: number;
  warmupMs: number;
  measureMs: number;
  /**
   * A step is sustained with loss ≤ maxLossRatio, p99 ≤ maxP99Ms, no dropped connection and
   * ≥ minSentRatio of the rate sent; the climb stops at loss, p99 > stopP99Ms, a drop or a short send.
   */
  criteria: { maxLossRatio: number; maxP99Ms: number; stopP99Ms: number; minSentRatio: number };
  runs: LadderRun[];
  summary: Partial<Record<ServerKind, { maxSustainedDeliveriesPerS: number; curve: LadderPoint[] }>>;
}

export interface IdleStep {
  server: ServerKind;
  rep: number;
  connections: number;
  first: number;
  before: MemoryReport;
  after: MemoryReport;
  /** Bytes per connection between `first` and `connections` connections. */
  perConnection: { rss: number; heapUsed: number; external: number; arrayBuffers: number };
  connectMs: number;
  /** Server CPU per connection opened (upgrade, auth, join), µs. */
  connectUserUs: number;
  connectSystemUs: number;
  failed: number;
}

export interface IdleSummary {
  runs: number;
  rssPerConn: number;
  heapPerConn: number;
  externalPerConn: number;
  connectUserUs: number;
  connectSystemUs: number;
  connectsPerS: number;
}

export interface IdleResult {
  connections: number;
  first: number;
  roomSize: number;
  reps: number;
  scaledDown: string | undefined;
  steps: IdleStep[];
  summary: Partial<Record<ServerKind, IdleSummary>>;
}

export interface HeadlineRow {
  metric: string;
  /** Lower is better, except where the metric says otherwise. */
  higherIsBetter: boolean;
  roomwireVsBare: number;
  socketioVsBare: number;
  roomwireVsSocketio: number;
}

export interface TargetRow {
  target: string;
  measured: string;
  met: boolean | undefined;
}

export interface Meta {
  date: string;
  mode: 'full' | 'quick' | 'partial';
  command: string;
  durationS: number;
  machine: { cpus: number; model: string; node: string; platform: string; kernel: string; memoryGiB: number };
  versions: { roomwire: string; ws: string; socketio: string };
  /** How the children ran: esbuild bundles (the default) or TypeScript under tsx (`--tsx`). */
  runner: string;
  /** The roomwire source measured: commit, and whether src/ had uncommitted changes. */
  source: string;
  /**
   * Kept windows during which other processes used more than `thresholdPct` of a core,
   * and how many windows were measured again for that reason.
   */
  noisy: { windows: number; of: number; thresholdPct: number; remeasured: number };
  /** Where the split of the servers' CPU time into user and system time came from. */
  cpuSplit: string;
  loadAverageAtStart: number[];
  notes: string[];
}

/** The cluster scenario's two setups: roomwire alone, and several roomwire processes on one Redis. */
export type ClusterSetup = 'single' | 'redis';

/**
 * Figures computed from one window of the cluster scenario: server figures are of all
 * processes together, and "other" load leaves Redis out.
 */
export interface ClusterDerived extends Derived {
  /** The redis-server process's CPU over the window, in % of one core; null when its /proc entry is not readable. */
  redisCpuPct: number | null;
  /** redis-server CPU (user + system) per delivery, µs. */
  redisUsPerDelivery: number | null;
  /**
   * Publishes accepted during the window, the broadcasts the Redis figures are divided by:
   * on Redis, the growth of the run's seq counters (read atomically with INFO, so exactly
   * the window's); alone, the acks the load generator received.
   */
  accepted: number;
  /** `SPUBLISH` and `PUBLISH` calls (INFO commandstats, those inside the Lua script included) per accepted publish. */
  redisPublishesPerBroadcast: number | null;
  /** Every command Redis ran (INFO commandstats, script calls included) per accepted publish. */
  redisCommandsPerBroadcast: number | null;
  /** Acks the load generator received per accepted publish: about 1, off by the acks in flight at the window's edges. */
  acksPerBroadcast: number | null;
}

export interface ClusterStep {
  setup: ClusterSetup;
  processes: number;
  rate: number;
  rep: number;
  connect: ConnectResult;
  /** Open connections as each server process counted them after the connect phase. */
  connectionsPerProcess: number[];
  run: RunResult;
  derived: ClusterDerived;
}

/** Medians of the reps of one setup at one rate (loss: all reps together). */
export interface ClusterSummary extends LoadFigures {
  setup: ClusterSetup;
  processes: number;
  rate: number;
  redisCpuPct: number | null;
  redisUsPerDelivery: number | null;
  redisPublishesPerBroadcast: number | null;
  redisCommandsPerBroadcast: number | null;
  acksPerBroadcast: number | null;
  /** Calls per accepted publish of each command Redis ran (medians), the largest first. */
  commandsPerBroadcast: Record<string, number>;
}

/** The processes on Redis against one process alone, at one rate, from the same run. */
export interface ClusterComparison {
  rate: number;
  /** Deliveries/s on Redis over deliveries/s alone. */
  deliveriesRatio: number;
  /** p99 on Redis minus p99 alone, ms. */
  p99DiffMs: number;
  p99Ratio: number;
  /** Server CPU per delivery (all processes) on Redis over alone. */
  serverCpuRatio: number;
}

/** What the cluster scenario runs: its plan, kept with its results. */
export interface ClusterPlan {
  description: string;
  topology: Topology;
  /** Server processes of the Redis setup. */
  processes: number;
  rates: number[];
  reps: number;
  warmupMs: number;
  measureMs: number;
  drainMs: number;
}

export interface ClusterResult extends ClusterPlan {
  /** How long the scenario took, connect phases and cleanup included. */
  durationS: number;
  /** Why the scenario did not run (Redis unreachable); nothing else is set then. */
  skipped: string | undefined;
  /** Why it stopped early; the steps measured until then are kept. */
  failed: string | undefined;
  redis:
    | {
        url: string;
        version: string;
        ioredis: string;
        /** The redis-server process whose CPU is read; null when its /proc entry is not readable. */
        pid: number | null;
        pidNote: string | undefined;
        /** Key and channel prefix of this run's processes. */
        prefix: string;
        /** Keys under the prefix deleted after the steps, and found left at the end (should be 0). */
        keysDeleted: number;
        keysLeft: number | null;
      }
    | undefined;
  steps: ClusterStep[];
  summary: ClusterSummary[];
  comparison: ClusterComparison[];
  notes: string[];
}

export interface Results {
  meta: Meta;
  small: LoadScenarioResult | undefined;
  big: LoadScenarioResult | undefined;
  ladder: LadderResult | undefined;
  idle: IdleResult | undefined;
  cluster: ClusterResult | undefined;
  headline: HeadlineRow[];
  targets: TargetRow[];
}

/** bench/results/cluster.json: the cluster scenario of one run, whatever else ran. */
export interface ClusterResults {
  meta: Meta;
  cluster: ClusterResult;
}

export interface ProfileResults {
  date: string;
  command: string;
  machine: Meta['machine'];
  runner: string;
  source: string;
  scenario: string;
  profiles: (ProfileSummary & { scenario: string; deliveries: number; serverUserMs: number; serverSystemMs: number })[];
}
