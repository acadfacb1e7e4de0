/**
 * Redis for the cluster scenario: where it is, what the servers are told about it, and
 * what the runner and the load generator read from it (`INFO commandstats`, the seq
 * counters of the run's rooms, the redis-server process's CPU from /proc), and the
 * cleanup of the run's keys.
 */
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { cpuDelta, readProcessCpu, type CpuTimes } from './proc.js';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/**
 * The connection name (`CLIENT SETNAME`) of every client the benchmark opens; a client
 * without it is someone else's, whose commands `INFO commandstats` counts too.
 */
export const BENCH_CLIENT_NAME = 'roomwire-bench';

/** What a clustered bench server is told, as its second argument (JSON). */
export interface RedisConfig {
  url: string;
  /** Key and channel prefix of the run's processes: unique per run, deleted afterwards. */
  prefix: string;
}

/** Reads the RedisConfig passed to a child process as its second argument. */
export function redisConfigFromArgv(argv: readonly string[]): RedisConfig {
  const raw = argv[3];
  if (raw === undefined) throw new Error('expected the Redis config as the second argument (JSON)');
  const value = JSON.parse(raw) as Partial<RedisConfig>;
  if (typeof value.url !== 'string' || typeof value.prefix !== 'string') throw new Error(`bad Redis config ${raw}`);
  return { url: value.url, prefix: value.prefix };
}

/** A prefix no other run uses, and which holds no glob character (it goes into `SCAN MATCH`). */
export function runPrefix(): string {
  return `roomwire-bench-${process.pid}-${Date.now()}`;
}

/** The key of a room's seq counter, as RedisBackplane names it (`<prefix>:seq:<room>`, docs/scaling.md). */
export function seqKey(prefix: string, room: string): string {
  return `${prefix}:seq:${room}`;
}

/**
 * A client for the runner and the load generator: connects at once or fails within
 * `timeoutMs`, never queues a command and never reconnects.
 */
export async function openProbeClient(url: string, timeoutMs = 2_000): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectionName: `${BENCH_CLIENT_NAME}-probe`,
  });
  // Failures surface as the rejections of the commands; the event only tells why connecting failed.
  let cause: Error | undefined;
  redis.on('error', (error: Error) => {
    cause = error;
  });
  try {
    await redis.connect();
  } catch (error) {
    redis.disconnect();
    throw cause ?? error;
  }
  return redis;
}

/** Closes a probe client, at once if QUIT does not answer. */
export async function closeProbeClient(redis: Redis): Promise<void> {
  await redis.quit().catch(() => redis.disconnect());
}

/** `key:value` lines of an `INFO` reply. */
export function parseInfo(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\r\n')) {
    const at = line.indexOf(':');
    if (at > 0 && !line.startsWith('#')) out.set(line.slice(0, at), line.slice(at + 1));
  }
  return out;
}

/** Calls per command from `INFO commandstats` (`cmdstat_<name>:calls=N,…`); subcommands read `client|list`. */
export function commandCalls(info: Map<string, string>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [key, value] of info) {
    if (!key.startsWith('cmdstat_')) continue;
    const calls = /(?:^|,)calls=(\d+)/.exec(value)?.[1];
    if (calls !== undefined) out[key.slice('cmdstat_'.length)] = Number(calls);
  }
  return out;
}

/** What the runner learns about the Redis server before the scenario. */
export interface RedisServerInfo {
  version: string;
  /**
   * The redis-server process, from `INFO server` (`process_id`); null when it is not a
   * local process this user may read in /proc (another host, a container, permissions).
   */
  pid: number | null;
  /** Why `pid` is null. */
  pidNote: string | undefined;
}

function isLocalUrl(url: string): boolean {
  try {
    const host = new URL(url).hostname;
    return host === '127.0.0.1' || host === 'localhost' || host === '[::1]' || host === '::1';
  } catch {
    return false;
  }
}

/** Version and process of the Redis server; throws when it is not reachable. */
export async function describeRedis(redis: Redis, url: string): Promise<RedisServerInfo> {
  const info = parseInfo(await redis.info('server'));
  const version = info.get('redis_version') ?? '?';
  const pid = Number(info.get('process_id'));
  if (!isLocalUrl(url)) return { version, pid: null, pidNote: 'Redis is not on this machine' };
  if (!Number.isInteger(pid) || pid <= 0) return { version, pid: null, pidNote: 'INFO server gave no process_id' };
  let comm: string;
  try {
    comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return { version, pid: null, pidNote: `/proc/${pid} is not readable (Redis in another PID namespace?)` };
  }
  if (!comm.startsWith('redis')) return { version, pid: null, pidNote: `/proc/${pid} is ${comm}, not redis-server (Redis in another PID namespace?)` };
  if (readProcessCpu(pid) === null) return { version, pid: null, pidNote: `/proc/${pid}/stat is not readable` };
  return { version, pid, pidNote: undefined };
}

/** Counters read at one instant. */
export interface RedisSnapshot {
  calls: Record<string, number>;
  /** Sum of the seq counters of the run's rooms. */
  seqSum: number;
  netInputBytes: number;
  netOutputBytes: number;
  /** Connected clients that are not the benchmark's (by connection name). */
  foreignClients: number;
  cpu: CpuTimes | null;
}

/**
 * What a snapshot itself sends, so the window's figures can leave it out. A window holds
 * the first snapshot's INFO and EXEC (each counted once it has run, so after that
 * snapshot's own INFO) and the second one's MULTI, CLIENT LIST and MGET.
 */
function ownCalls(seqKeys: readonly string[]): Record<string, number> {
  const own: Record<string, number> = { multi: 1, exec: 1, 'client|list': 1, info: 1 };
  if (seqKeys.length > 0) own.mget = 1;
  return own;
}

/**
 * Reads the counters in one MULTI/EXEC, so no other client's command falls between the
 * seq counters and `INFO commandstats`: both then count the same publishes.
 */
export async function snapshotRedis(redis: Redis, seqKeys: readonly string[], pid: number | null): Promise<RedisSnapshot> {
  let transaction = redis.multi().client('LIST');
  if (seqKeys.length > 0) transaction = transaction.mget(...seqKeys);
  const replies = await transaction.info('commandstats', 'stats').exec();
  const cpu = pid === null ? null : readProcessCpu(pid);
  if (!replies) throw new Error('the snapshot transaction was aborted');
  const failed = replies.find(([error]) => error !== null);
  if (failed?.[0]) throw failed[0];
  const list = String(replies[0]?.[1] ?? '');
  const seqs = seqKeys.length > 0 ? (replies[1]?.[1] as (string | null)[]) : [];
  const info = parseInfo(String(replies[replies.length - 1]?.[1] ?? ''));
  return {
    calls: commandCalls(info),
    seqSum: seqs.reduce((sum, value) => sum + (value === null ? 0 : Number(value)), 0),
    netInputBytes: Number(info.get('total_net_input_bytes') ?? Number.NaN),
    netOutputBytes: Number(info.get('total_net_output_bytes') ?? Number.NaN),
    foreignClients: list.split('\n').filter((line) => line.trim() !== '' && !/ name=roomwire-bench/.test(line)).length,
    cpu,
  };
}

/** Redis over one measured window. */
export interface RedisWindow {
  /** Calls per command during the window (`INFO commandstats`, commands run inside scripts included), the snapshots' own left out. */
  calls: Record<string, number>;
  publishCalls: number;
  totalCalls: number;
  /** Publishes Redis gave a seq in the run's rooms: the growth of their counters (independent of other clients). */
  sequenced: number;
  netInputBytes: number;
  netOutputBytes: number;
  /** The most clients that were not the benchmark's at either end of the window: their commands are counted too. */
  foreignClients: number;
  /** The redis-server process's CPU over the window; null when its /proc entry is not readable. */
  cpu: CpuTimes | null;
}

export function redisWindow(before: RedisSnapshot, after: RedisSnapshot, seqKeys: readonly string[]): RedisWindow {
  const own = ownCalls(seqKeys);
  const calls: Record<string, number> = {};
  for (const [name, count] of Object.entries(after.calls)) {
    const delta = count - (before.calls[name] ?? 0) - (own[name] ?? 0);
    if (delta !== 0) calls[name] = delta;
  }
  return {
    calls,
    // Rooms and the control channel go over sharded pub/sub (SPUBLISH); PUBLISH was the
    // control channel's before it moved there, and is still counted should it come back.
    publishCalls: (calls.spublish ?? 0) + (calls.publish ?? 0),
    totalCalls: Object.values(calls).reduce((a, b) => a + b, 0),
    sequenced: after.seqSum - before.seqSum,
    netInputBytes: after.netInputBytes - before.netInputBytes,
    netOutputBytes: after.netOutputBytes - before.netOutputBytes,
    foreignClients: Math.max(before.foreignClients, after.foreignClients),
    cpu: before.cpu && after.cpu ? cpuDelta(before.cpu, after.cpu) : null,
  };
}

/** Keys under `prefix:` (SCAN MATCH). */
export async function countPrefix(redis: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let count = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1_000);
    cursor = next;
    count += keys.length;
  } while (cursor !== '0');
  return count;
}

/** Deletes every key under `prefix:` (SCAN MATCH + UNLINK); returns how many. */
export async function deletePrefix(redis: Redis, prefix: string): Promise<number> {
  if (/[*?[\]\\]/.test(prefix) || prefix === '') throw new Error(`refusing to delete keys under the prefix ${JSON.stringify(prefix)}`);
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1_000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}
