/**
 * `roomwire/redis`: the Redis backplane. Several processes behind a load balancer share
 * rooms, per-room seqs, history for `resume`, membership changes and presence. Needs
 * Redis 7+ and a client with the {@link RedisLike} shape (`ioredis` 5, an optional peer
 * dependency).
 *
 * @module roomwire/redis
 */
import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Backplane, BackplaneHandlers, CidClaim, ClusterCids, ClusterPresence, HistoryStore, LostUser, MembershipChange, PublishCid, StoredMessage } from '../index.js';
import { withTimeout } from '../timeout.js';

/**
 * The few methods of a Redis client that {@link RedisBackplane} uses: an `ioredis`
 * (version 5) `Redis` instance fits as it is. Create it with `enableOfflineQueue: false`
 * so that commands fail at once while Redis is unreachable instead of queueing (a
 * publish then fails to the publisher rather than hanging), and with
 * `autoResendUnfulfilledCommands: false`, so that a publish whose reply was lost with its
 * connection is not sent again after the reconnect: Redis would run it twice, giving one
 * message two seqs.
 */
export interface RedisLike {
  /** Runs a Lua script by its SHA1 (`EVALSHA`). */
  evalsha(sha1: string, numkeys: number, ...args: (string | number)[]): Promise<unknown>;
  /** Runs a Lua script (`EVAL`); used when the server does not know the SHA1 yet. */
  eval(script: string, numkeys: number, ...args: (string | number)[]): Promise<unknown>;
  /** `GET`. */
  get(key: string): Promise<string | null>;
  /** `XRANGE key start end`. */
  xrange(key: string, start: string, end: string): Promise<[id: string, fields: string[]][]>;
  /** `SSUBSCRIBE`, sharded pub/sub (on the subscriber connection). */
  ssubscribe(...channels: string[]): Promise<unknown>;
  /** `SUNSUBSCRIBE` (on the subscriber connection). */
  sunsubscribe(...channels: string[]): Promise<unknown>;
  /** A new connection with the same options: the subscriber, unless one is given. */
  duplicate(): RedisLike;
  /** Closes the connection after pending replies. */
  quit(): Promise<unknown>;
  /** Closes the connection at once and does not reconnect. */
  disconnect(): void;
  /** `'ready'` once connected (and after each reconnect). */
  readonly status: string;
  /** A published message on a subscribed channel (`message`) or sharded channel (`smessage`). */
  on(event: 'message' | 'smessage', listener: (channel: string, message: string) => void): unknown;
  /** Connected (again) and usable. */
  on(event: 'ready', listener: () => void): unknown;
  /** A connection error; the client reconnects on its own. */
  on(event: 'error', listener: (error: Error) => void): unknown;
  /** Removes a `message` or `smessage` listener. */
  removeListener(event: 'message' | 'smessage', listener: (channel: string, message: string) => void): unknown;
  /** Removes a `ready` listener. */
  removeListener(event: 'ready', listener: () => void): unknown;
  /** Removes an `error` listener. */
  removeListener(event: 'error', listener: (error: Error) => void): unknown;
}

/** Options of {@link RedisBackplane}. */
export interface RedisBackplaneOptions {
  /**
   * The command connection. Created by you, with `enableOfflineQueue: false` and
   * `autoResendUnfulfilledCommands: false` (see {@link RedisLike}); not closed by the backplane.
   */
  redis: RedisLike;
  /**
   * The subscriber connection. By default `redis.duplicate()`, which the backplane
   * owns and closes; one you pass is not closed.
   */
  subscriber?: RedisLike | undefined;
  /** Prefix of every key and channel; several apps (or test runs) can share one Redis. @default 'roomwire' */
  prefix?: string | undefined;
  /** Messages kept per room in its stream (approximately: `MAXLEN ~`, at least this many). @default 500 */
  historyLimit?: number | undefined;
  /** A process whose heartbeat is older than this stops counting, and its users with it. @default 15000 */
  nodeTimeoutMs?: number | undefined;
  /** How often this process beats. @default nodeTimeoutMs / 3 */
  heartbeatMs?: number | undefined;
  /** How long a publish, subscribe, announce or history read may take before it fails. @default 5000 */
  commandTimeoutMs?: number | undefined;
  /** This process's id in the cluster. @default `<hostname>-<pid>-<random>` */
  nodeId?: string | undefined;
  /**
   * Also close `redis` (and a given `subscriber`) on `close()`: set it when you created
   * the clients for the backplane alone, so closing the `RoomManager` releases them.
   * @default false
   */
  closeClients?: boolean | undefined;
}

interface Script {
  readonly source: string;
  readonly sha: string;
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

/** Milliseconds from Redis's own clock, so processes with skewed clocks agree on heartbeat ages. */
const NOW = `local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// KEYS: seq, stream, epoch[, cid]. ARGV: history limit, channel, message JSON, epoch
// candidate[, message id, cid window ms]. One script, so seq, history and publish happen
// atomically and in the same order. Rooms use sharded pub/sub (SPUBLISH, Redis 7): on a
// single server it is delivered like PUBLISH. The epoch is written only when Redis lost it
// (with its data): seqs restart under a new one. With a cid key, a cid already published
// is not published again: the reply carries the earlier message's seq and id.
const PUBLISH = script(`
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[3], epoch)
end
if KEYS[4] then
  local held = redis.call('GET', KEYS[4])
  if held and string.sub(held, 1, 2) == 'm:' then
    local at = string.find(held, ':', 3, true)
    return {tonumber(string.sub(held, 3, at - 1)), epoch, string.sub(held, at + 1)}
  end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0', 'm', ARGV[3])
redis.call('SPUBLISH', ARGV[2], seq .. '\\n' .. ARGV[3])
if KEYS[4] then redis.call('SET', KEYS[4], 'm:' .. seq .. ':' .. ARGV[5], 'PX', ARGV[6]) end
return {seq, epoch}
`);

// KEYS: cid. ARGV: node id, hold ms. A cid is free, claimed by a node ('p:<node>') for a
// while, or published ('m:<seq>:<id>') for the dedupe window. Returns {'claimed'},
// {'published', seq, id} or {'busy', ms left on the other node's claim}.
const CLAIM = script(`
local held = redis.call('GET', KEYS[1])
if not held or held == 'p:' .. ARGV[1] then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'PX', ARGV[2])
  return {'claimed'}
end
if string.sub(held, 1, 2) == 'm:' then
  local at = string.find(held, ':', 3, true)
  return {'published', string.sub(held, 3, at - 1), string.sub(held, at + 1)}
end
return {'busy', tostring(redis.call('PTTL', KEYS[1]))}
`);

// KEYS: cid. ARGV: node id. Drops the node's own claim; a published cid stays.
const RELEASE = script(`
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
`);

// KEYS: epoch. ARGV: candidate.
const EPOCH = script(`
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
`);

// KEYS: nodes, own presence, own rooms, own drop mark. ARGV: node id, timeout, presence
// key prefix, rewrite ('1'/'0'), rooms key prefix, drop mark prefix, drop mark ttl, first
// ('1' on this process's first beat), drop ('1' unless this node is in its grace after a
// stale heartbeat), then user, count, rooms (a JSON array) for each user of a rewrite.
//
// Returns -1, without beating, when this node's heartbeat was stale or gone and it did not
// rewrite: the other nodes may have dropped its hash, or it expired (PEXPIRE 2x the
// timeout) when nobody was left to drop the node. Beating first would make the node live
// with a hash that misses its users, and TRACK would decide from that (see TRACK) until
// the rewrite. So the node stays out until a beat rewrites its hash in the same step.
//
// Otherwise {lost, marked, back, fresh}. A node that was live before this beat (fresh, 1)
// drops the nodes whose heartbeat is stale, unless told not to (drop '0'): lost are user,
// rooms pairs of their users no node left has, for this node to say offline. Each dropped
// node gets a drop mark, the set of its users the cluster no longer counts, for when it
// comes back. A node back from a stale heartbeat (fresh 0) drops nobody on that beat, and
// its process none for nodeTimeoutMs more (the others, cut off with it, may not have
// beaten again yet: their users are not gone). Its rewrite takes its own mark (marked);
// back are the marked users it still has and no other node has, for it to say online.
// On a process's first beat, whatever Redis holds under its id was left by another
// process that ran with the same id (a restart, before anyone dropped it): those users
// are lost too, those the rewrite does not write again and no other node has. A node
// whose heartbeat is stale but that nobody has dropped yet still holds its users here,
// as in TRACK: the offline for them is said when it is dropped, not before.
const HEARTBEAT = script(`
${NOW}
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
local fresh = last and tonumber(last) >= now - tonumber(ARGV[2])
if ARGV[4] ~= '1' and not fresh then return -1 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
local nodes
local function held(user, except)
  nodes = nodes or redis.call('ZRANGE', KEYS[1], 0, -1)
  for _, node in ipairs(nodes) do
    if node ~= except and redis.call('HEXISTS', ARGV[3] .. node, user) == 1 then return true end
  end
  return false
end
local rooms, order = {}, {}
local function gather(counts, kept)
  local of = {}
  kept = redis.call('HGETALL', kept)
  for i = 1, #kept, 2 do of[kept[i]] = kept[i + 1] end
  local users = redis.call('HKEYS', counts)
  for _, user in ipairs(users) do
    if rooms[user] == nil then
      table.insert(order, user)
      rooms[user] = of[user] or ''
    elseif of[user] then
      rooms[user] = rooms[user] .. '\\n' .. of[user]
    end
  end
  return users
end
if fresh and ARGV[9] == '1' then
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))) do
    local mark = ARGV[6] .. node
    for _, user in ipairs(gather(ARGV[3] .. node, ARGV[5] .. node)) do redis.call('SADD', mark, user) end
    redis.call('PEXPIRE', mark, ARGV[7])
    redis.call('DEL', ARGV[3] .. node, ARGV[5] .. node)
    redis.call('ZREM', KEYS[1], node)
  end
end
if ARGV[8] == '1' then gather(KEYS[2], KEYS[3]) end
local marked, back = {}, {}
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3])
  for i = 10, #ARGV, 3 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2]) end
  end
  marked = redis.call('SMEMBERS', KEYS[4])
  redis.call('DEL', KEYS[4])
  for _, user in ipairs(marked) do
    if redis.call('HEXISTS', KEYS[2], user) == 1 and not held(user, ARGV[1]) then table.insert(back, user) end
  end
end
local lost = {}
for _, user in ipairs(order) do
  if not held(user, nil) then
    table.insert(lost, user)
    table.insert(lost, rooms[user])
  end
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]) * 2)
return {lost, marked, back, fresh and 1 or 0}
`);

// KEYS: own presence, nodes, own rooms, own drop mark. ARGV: user, count, ttl, node id,
// timeout, presence key prefix, count before, settle ('1'/'0'), rooms (a JSON array, or
// '': kept with the count, for the offline the survivors say if this node is dropped).
// Sets this node's count of the user's connections (not a delta: a
// count an earlier failed call left wrong is set right). Returns 1 when the user crossed
// zero here and no other node has them (see below): online or offline in the cluster. One
// script, so exactly one process sees each crossing. The count before is the one in
// Redis while this node's heartbeat is fresh; once it is stale or gone (Redis out of the
// node's reach for longer than the timeout), the other nodes have dropped or may drop
// its record, so the count the node last meant to write (ARGV[7]) is used instead: a
// last close made during a long outage is still an offline. With ARGV[8] '1' (a settle)
// ARGV[7] is used whatever the heartbeat: the count before the first failed call, which
// is what the cluster was told of; the hash may hold a later one whose write ran but
// whose reply (and crossing) was lost. A settle returns -1, writing nothing, while this
// node's heartbeat is stale: the other nodes' heartbeats may be stale for the same reason
// (Redis was out of everyone's reach, or lost its data), and a crossing decided before
// they beat again would count their users out. A user in this node's drop mark (the node
// was dropped, and the cluster no longer counts its connections) counts 0 before, and
// leaves the mark: the rewrite must not say online for them a second time. Another node
// holds the user while it is in the heartbeats, stale or not: a stale one is dropped by
// the next live heartbeat, which says offline for its users then (see HEARTBEAT), so a
// crossing decided here without it would be said twice (a last close elsewhere), or an
// online said to a cluster that was never told the user left.
const TRACK = script(`
${NOW}
local beat = redis.call('ZSCORE', KEYS[2], ARGV[4])
local fresh = beat and tonumber(beat) >= now - tonumber(ARGV[5])
if ARGV[8] == '1' and not fresh then return -1 end
local before = tonumber(ARGV[7])
if ARGV[8] ~= '1' and fresh then before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') end
if not fresh and redis.call('SREM', KEYS[4], ARGV[1]) == 1 then before = 0 end
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], n)
  if ARGV[9] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[9]) end
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if (before > 0) == (n > 0) then return 0 end
for _, node in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if node ~= ARGV[4] and redis.call('HEXISTS', ARGV[6] .. node, ARGV[1]) == 1 then return 0 end
end
return 1
`);

// KEYS: nodes. ARGV: timeout, presence key prefix, [user]. Users online on live nodes,
// or (with a user) the live nodes where that user is.
const ONLINE = script(`
${NOW}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local out = {}
if ARGV[3] then
  for _, node in ipairs(live) do
    if redis.call('HEXISTS', ARGV[2] .. node, ARGV[3]) == 1 then table.insert(out, node) end
  end
  return out
end
local seen = {}
for _, node in ipairs(live) do
  for _, user in ipairs(redis.call('HKEYS', ARGV[2] .. node)) do
    if not seen[user] then seen[user] = true table.insert(out, user) end
  end
end
return out
`);

// KEYS: control channel. ARGV: payload. Through EVAL so RedisLike needs no SPUBLISH. A
// shard channel like the rooms': see SUBSCRIPTIONS.
const ANNOUNCE = script(`return redis.call('SPUBLISH', KEYS[1], ARGV[1])`);

// KEYS: nodes, own presence, own rooms, own drop mark. ARGV: node id.
const LEAVE = script(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
`);

function newEpoch(): string {
  return randomBytes(8).toString('base64url');
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/** What a stream entry and a published payload hold: the message without its seq. */
type Unsequenced = Omit<StoredMessage, 'seq'>;

/** A published payload or a stream entry: the message, with the connection its broadcast left out, if any. */
function parseMessage(json: string, seq: number): StoredMessage {
  const raw = JSON.parse(json) as Unsequenced;
  if (typeof raw.room !== 'string' || typeof raw.id !== 'string' || typeof raw.ts !== 'number') throw new Error('malformed message in Redis');
  const message = { room: raw.room, id: raw.id, seq, from: raw.from ?? null, data: raw.data, ts: raw.ts };
  return typeof raw.except === 'string' ? { ...message, except: raw.except } : message;
}

/**
 * The cluster's seq and history on Redis: one counter (`INCR`) and one capped stream per
 * room, whose entry ids are `<seq>-0` so `since` is one `XRANGE`. Normally created by
 * {@link RedisBackplane} (its `history`); usable alone as a durable `HistoryStore` for
 * one process.
 */
export class RedisHistoryStore implements HistoryStore {
  /** @internal Set from Redis at start and by every publish. */
  currentEpoch: string | undefined;
  /** The epoch this process proposes should Redis have lost its own; replaced once used. */
  private candidate = newEpoch();

  /** @internal Use {@link RedisBackplane}. */
  constructor(
    private readonly redis: RedisLike,
    private readonly keys: RedisKeys,
    private readonly limit: number,
    private readonly run: (script: Script, keys: string[], args: (string | number)[]) => Promise<unknown>,
    /** How long a read may take before it fails: a Redis that stalls must not hold a resume for as long as TCP takes to give up. */
    private readonly timeoutMs = Number.POSITIVE_INFINITY,
  ) {}

  /**
   * Kept in Redis (`SET NX`), so it is the same on every process and across restarts of
   * Node; it changes only when Redis loses its data (and seqs restart from 1).
   */
  get epoch(): string | undefined {
    return this.currentEpoch;
  }

  /**
   * Gives the message its seq, appends it to the room's stream and publishes it,
   * atomically. With `cid`, see {@link RedisBackplane.publish}.
   */
  async append(message: Omit<StoredMessage, 'seq'>, cid?: PublishCid, except?: string): Promise<StoredMessage> {
    const { room, id, from, data, ts } = message;
    // `except` travels with the message, and stays in the stream entry for a process that catches up.
    const json = JSON.stringify(except === undefined ? { room, id, from, data, ts } : { room, id, from, data, ts, except });
    const keys = [this.keys.seq(room), this.keys.history(room), this.keys.epoch];
    const args: (string | number)[] = [this.limit, this.keys.channel(room), json, this.candidate];
    const windowMs = cid === undefined ? 0 : Math.min(Math.ceil(cid.windowMs), MAX_CID_MS);
    if (cid !== undefined && windowMs > 0) {
      keys.push(this.keys.cid(cid.key));
      args.push(id, windowMs);
    }
    const reply = (await this.run(PUBLISH, keys, args)) as [number, string, string?];
    this.currentEpoch = reply[1];
    // Never propose the same epoch twice: Redis could lose its data again.
    if (reply[1] === this.candidate) this.candidate = newEpoch();
    return { room, id: reply[2] ?? id, seq: Number(reply[0]), from, data, ts };
  }

  /** The room's latest seq from its counter; 0 when it has none. */
  async latestSeq(room: string): Promise<number> {
    const value = await withTimeout(this.redis.get(this.keys.seq(room)), this.timeoutMs, 'latestSeq');
    return value === null ? 0 : Number(value);
  }

  /** Same answers as the in-memory store: `null` when the stream no longer reaches back, or `afterSeq` is beyond the latest. */
  async since(room: string, afterSeq: number, untilSeq?: number): Promise<StoredMessage[] | null> {
    const latest = await this.latestSeq(room);
    if (afterSeq > latest) return null;
    if (afterSeq === latest) return [];
    const first = afterSeq + 1;
    const end = Math.min(untilSeq ?? latest, latest);
    const key = this.keys.history(room);
    // Trimming only removes the oldest entries: if the first one asked for is there, all are.
    const entries = await withTimeout(this.redis.xrange(key, `${first}-0`, `${Math.max(end, first)}-0`), this.timeoutMs, 'since');
    const head = entries[0];
    if (!head || head[0] !== `${first}-0`) return null;
    if (end < first) return [];
    return entries.map(([entryId, fields]) => parseMessage(fields[1] ?? '{}', Number.parseInt(entryId, 10)));
  }
}

/** @internal Key and channel names under one prefix. */
interface RedisKeys {
  readonly epoch: string;
  readonly nodes: string;
  readonly control: string;
  readonly roomChannelPrefix: string;
  readonly presencePrefix: string;
  readonly roomsPrefix: string;
  readonly dropPrefix: string;
  seq(room: string): string;
  history(room: string): string;
  channel(room: string): string;
  cid(key: string): string;
}

/** TRACK's answer to a settle while this node's heartbeat is stale: nothing written, decide later. */
const STALE = -1;

/**
 * How long a dropped node's mark (its users the cluster no longer counts) is kept for its
 * return: a day. A node cut off for longer says no `online` for its users when it is back.
 */
const DROP_MARK_MS = 86_400_000;

/**
 * The rooms HEARTBEAT found for a lost user: one JSON array per dropped node that had the
 * user, newline-joined (JSON text has no raw newline), as one deduplicated list.
 */
function lostRooms(joined: string): string[] {
  const rooms = new Set<string>();
  for (const part of joined.split('\n')) {
    if (part === '') continue;
    try {
      const parsed: unknown = JSON.parse(part);
      if (Array.isArray(parsed)) for (const room of parsed) if (typeof room === 'string') rooms.add(room);
    } catch {
      // Not written by this version: the offline goes to the rooms kept on each process only.
    }
  }
  return [...rooms];
}

/** A `track` call whose count did not reach Redis, waiting for a later write to answer it. */
interface UnsettledTrack {
  readonly delta: 1 | -1;
  /** This node's count of the user before the call. */
  readonly before: number;
  readonly resolve: (crossed: boolean) => void;
}

/** The longest a cid is kept in Redis: an infinite `dedupeWindowMs` is held this long (24.8 days). */
const MAX_CID_MS = 2 ** 31 - 1;

/**
 * A {@link Backplane} on Redis (7 or later): rooms, seqs, history, membership changes and
 * presence shared by every process that uses the same Redis and prefix.
 *
 * - A publish is one Lua script: `INCR` the room's seq, `XADD` to its capped stream,
 *   `SPUBLISH` on the room's sharded channel — one Redis publish per broadcast, whatever
 *   the number of members or processes. It fails to the publisher when Redis is unreachable.
 * - A client publish with a `cid` leaves a small key (`<prefix>:cid:…`) for the manager's
 *   `dedupeWindowMs`, so a retry on any process is acknowledged instead of published
 *   again; the publish script checks and sets it in the same atomic step.
 * - Each process subscribes (`SSUBSCRIBE`) only to the channels of rooms with local
 *   connections, on one subscriber connection, plus one control channel for membership
 *   changes and presence, a shard channel too: ioredis counts a connection's channels and
 *   shard channels as one, and leaves subscriber mode, dropping whatever else it is
 *   subscribed to, when the last `SUNSUBSCRIBE` answers 0. A `subscriber` you pass must
 *   not be used for plain `SUBSCRIBE`s of your own for the same reason.
 * - Each process beats every `heartbeatMs` (a sorted set of node ids by Redis time) and
 *   keeps its users' connection counts in a hash; presence queries count only nodes
 *   beaten within `nodeTimeoutMs`, and survivors delete the records of dead ones and say
 *   `offline` for their users (see {@link BackplaneHandlers.presence}).
 *
 * @example
 * ```ts
 * import { Redis } from 'ioredis';
 * import { RoomManager } from 'roomwire';
 * import { RedisBackplane } from 'roomwire/redis';
 *
 * declare const options: Omit<import('roomwire').RoomManagerOptions, 'backplane'>;
 * const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { enableOfflineQueue: false, autoResendUnfulfilledCommands: false });
 * const rooms = new RoomManager({ ...options, backplane: new RedisBackplane({ redis }) });
 * ```
 */
export class RedisBackplane implements Backplane {
  /** The cluster's seq and history, in Redis. */
  readonly history: RedisHistoryStore;
  /** Cluster presence, from the heartbeats and connection counts in Redis. */
  readonly presence: ClusterPresence;
  /** Publishes in progress by cid, as keys next to the published ones. */
  readonly cids: ClusterCids;
  private readonly redis: RedisLike;
  private readonly subscriber: RedisLike;
  private readonly ownsSubscriber: boolean;
  private readonly closeClients: boolean;
  private readonly keys: RedisKeys;
  private readonly nodeId: string;
  private readonly nodeTimeoutMs: number;
  private readonly heartbeatMs: number;
  private readonly commandTimeoutMs: number;
  private readonly ownPresence: string;
  /** This node's presence keys, as the scripts take them: counts, rooms, drop mark. */
  private readonly ownKeys: [counts: string, rooms: string, dropMark: string];
  /** This node's open connections per user: the truth the Redis hash is repaired from. */
  private readonly counts = new Map<string, number>();
  /**
   * The rooms of each user's first connection here, as JSON: kept in Redis with the
   * count, for the `offline` the other processes say if this one is dropped.
   */
  private readonly userRooms = new Map<string, string>();
  private readonly rooms = new Set<string>();
  private handlers: BackplaneHandlers | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** The hash in Redis may be wrong (a write failed, Redis restarted): rewrite it on the next beat. */
  private dirty = true;
  /**
   * Counts that did not reach Redis, by user, with the `track` calls still waiting to
   * learn whether they made the user online or offline in the cluster: written again,
   * with the user's current count, before the next heartbeat's rewrite would lose the
   * count Redis had before.
   */
  private readonly unsettled = new Map<string, UnsettledTrack[]>();
  private settling: Promise<void> | undefined;
  /**
   * This node's heartbeat was found stale: the counts that failed wait until it has beaten
   * again with its counts rewritten, and then one heartbeat more (`settleFrom`), so that the
   * other nodes cut off with it have beaten too before a crossing is decided.
   */
  private stale = false;
  private settleFrom = 0;
  /**
   * No heartbeat has reached Redis from this process yet: the counts Redis holds under its
   * id, if any, are another process's, one restarted with the same `nodeId` (see HEARTBEAT).
   */
  private firstBeat = true;
  /**
   * Until then this process drops no other: it found its own heartbeat stale, and the
   * processes cut off with it (every one, when Redis was out of everyone's reach) may come
   * back later than it did, each on its client's reconnect schedule. A process that
   * crashed meanwhile is dropped after that, by this one or by any live one.
   */
  private dropFrom = 0;
  /** Whether the epoch was read since the subscriber last reconnected. */
  private epochRead: 'done' | 'reading' | 'pending' = 'done';
  private closed = false;
  private readonly listeners: {
    message: (channel: string, payload: string) => void;
    subscriberReady: () => void;
    redisReady: () => void;
    error: (error: Error) => void;
  };

  constructor(options: RedisBackplaneOptions) {
    const prefix = options.prefix ?? 'roomwire';
    const limit = options.historyLimit ?? 500;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError('historyLimit must be a whole number >= 1');
    this.nodeTimeoutMs = options.nodeTimeoutMs ?? 15_000;
    this.heartbeatMs = options.heartbeatMs ?? Math.max(1, Math.floor(this.nodeTimeoutMs / 3));
    this.commandTimeoutMs = options.commandTimeoutMs ?? 5_000;
    this.nodeId = options.nodeId ?? `${hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
    this.redis = options.redis;
    this.ownsSubscriber = options.subscriber === undefined;
    this.closeClients = options.closeClients ?? false;
    this.subscriber = options.subscriber ?? options.redis.duplicate();
    this.keys = {
      epoch: `${prefix}:epoch`,
      nodes: `${prefix}:nodes`,
      control: `${prefix}:control`,
      roomChannelPrefix: `${prefix}:room:`,
      presencePrefix: `${prefix}:presence:`,
      roomsPrefix: `${prefix}:presence-rooms:`,
      dropPrefix: `${prefix}:dropped:`,
      seq: (room) => `${prefix}:seq:${room}`,
      history: (room) => `${prefix}:history:${room}`,
      channel: (room) => `${prefix}:room:${room}`,
      cid: (key) => `${prefix}:cid:${key}`,
    };
    this.ownPresence = `${this.keys.presencePrefix}${this.nodeId}`;
    this.ownKeys = [this.ownPresence, `${this.keys.roomsPrefix}${this.nodeId}`, `${this.keys.dropPrefix}${this.nodeId}`];
    this.history = new RedisHistoryStore(this.redis, this.keys, limit, (s, keys, args) => this.run(s, keys, args), this.commandTimeoutMs);
    this.presence = {
      nodeId: this.nodeId,
      track: (user, delta, rooms) => this.track(user, delta, rooms),
      onlineUsers: async () => (await this.run(ONLINE, [this.keys.nodes], [this.nodeTimeoutMs, this.keys.presencePrefix])) as string[],
      nodesOf: async (user) => (await this.run(ONLINE, [this.keys.nodes], [this.nodeTimeoutMs, this.keys.presencePrefix, user])) as string[],
    };
    this.cids = {
      claim: (key, holdMs) => withTimeout(this.claim(key, holdMs), this.commandTimeoutMs, 'claim'),
      release: async (key) => {
        await withTimeout(this.run(RELEASE, [this.keys.cid(key)], [this.nodeId]), this.commandTimeoutMs, 'release');
      },
    };
    this.listeners = {
      message: (channel, payload) => this.onMessage(channel, payload),
      subscriberReady: () => void this.resubscribe(),
      redisReady: () => {
        this.dirty = true;
      },
      error: (error) => this.handlers?.error(error, 'redis'),
    };
  }

  async start(handlers: BackplaneHandlers): Promise<void> {
    this.handlers = handlers;
    const sub = this.subscriber;
    sub.on('message', this.listeners.message);
    sub.on('smessage', this.listeners.message);
    if (this.ownsSubscriber) sub.on('error', this.listeners.error);
    await Promise.all([this.ready(this.redis), this.ready(sub)]);
    // Closed meanwhile: nothing may be added back that close() has taken away.
    if (this.closed) throw new Error('backplane closed');
    sub.on('ready', this.listeners.subscriberReady);
    this.redis.on('ready', this.listeners.redisReady);
    await withTimeout(sub.ssubscribe(this.keys.control), this.commandTimeoutMs, 'subscribe');
    await this.readEpoch();
    await this.beat();
    if (this.closed) throw new Error('backplane closed');
    this.timer = setInterval(() => {
      if (this.epochRead === 'pending') void this.afterReconnect();
      void this.beat().catch((error: unknown) => this.handlers?.error(asError(error), 'heartbeat'));
    }, this.heartbeatMs);
    this.timer.unref?.();
  }

  /**
   * One Lua script (see the class's notes). With `cid`, a cid published within its window
   * by any process is not published again: the call resolves the earlier message's id
   * and seq. Redis keeps each published cid for the window (`dedupeWindowMs`, 5 minutes
   * by default): one small key per publish that has a cid.
   */
  publish(message: Omit<StoredMessage, 'seq'>, cid?: PublishCid, except?: string): Promise<StoredMessage> {
    if (this.closed) return Promise.reject(new Error('backplane closed'));
    return withTimeout(this.history.append(message, cid, except), this.commandTimeoutMs, 'publish');
  }

  private async claim(key: string, holdMs: number): Promise<CidClaim> {
    const ms = Math.max(1, Math.min(Math.ceil(holdMs), MAX_CID_MS));
    const reply = (await this.run(CLAIM, [this.keys.cid(key)], [this.nodeId, ms])) as string[];
    if (reply[0] === 'published') return { state: 'published', seq: Number(reply[1]), id: reply[2] ?? '' };
    if (reply[0] === 'busy') return { state: 'busy', retryMs: Math.max(0, Number(reply[1])) };
    return { state: 'claimed' };
  }

  async subscribe(room: string): Promise<void> {
    // Added first, so a reconnect meanwhile resubscribes it; taken back if the subscribe
    // fails, or the room would stay subscribed with nobody here to unsubscribe it.
    this.rooms.add(room);
    try {
      await withTimeout(this.subscriber.ssubscribe(this.keys.channel(room)), this.commandTimeoutMs, 'subscribe');
    } catch (error) {
      this.rooms.delete(room);
      throw error;
    }
  }

  async unsubscribe(room: string): Promise<void> {
    this.rooms.delete(room);
    await withTimeout(this.subscriber.sunsubscribe(this.keys.channel(room)), this.commandTimeoutMs, 'unsubscribe');
  }

  async announce(change: MembershipChange): Promise<void> {
    await withTimeout(
      this.run(ANNOUNCE, [this.keys.control], [JSON.stringify({ node: this.nodeId, change })]),
      this.commandTimeoutMs,
      'announce',
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const waiting of this.unsettled.values()) for (const call of waiting) call.resolve(false);
    this.unsettled.clear();
    this.handlers = undefined;
    const sub = this.subscriber;
    sub.removeListener('message', this.listeners.message);
    sub.removeListener('smessage', this.listeners.message);
    sub.removeListener('ready', this.listeners.subscriberReady);
    this.redis.removeListener('ready', this.listeners.redisReady);
    try {
      await withTimeout(this.run(LEAVE, [this.keys.nodes, ...this.ownKeys], [this.nodeId]), this.commandTimeoutMs, 'leave');
    } catch {
      // Unreachable Redis: the survivors remove this node once its heartbeat is stale.
    }
    if (this.ownsSubscriber) {
      try {
        await withTimeout(sub.quit(), this.commandTimeoutMs, 'quit');
      } catch {
        sub.disconnect();
      }
      sub.removeListener('error', this.listeners.error);
    } else {
      const channels = [...this.rooms].map((room) => this.keys.channel(room));
      // Bounded: a connection of your own may queue it until Redis is back, which may be never.
      await withTimeout(sub.sunsubscribe(this.keys.control, ...channels), this.commandTimeoutMs, 'unsubscribe').catch(() => undefined);
    }
    this.rooms.clear();
    if (this.closeClients) {
      const clients = this.ownsSubscriber ? [this.redis] : [this.redis, sub];
      await Promise.all(clients.map((c) => withTimeout(c.quit(), this.commandTimeoutMs, 'quit').catch(() => c.disconnect())));
    }
  }

  private async run(s: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await this.redis.evalsha(s.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      // First use on this server (or it restarted): send the source once; EVAL caches it.
      return this.redis.eval(s.source, keys.length, ...keys, ...args);
    }
  }

  private async ready(client: RedisLike): Promise<void> {
    if (client.status === 'ready') return;
    let onReady: () => void = () => undefined;
    try {
      await withTimeout(
        new Promise<void>((resolve) => {
          onReady = resolve;
          client.on('ready', onReady);
        }),
        this.commandTimeoutMs,
        'connecting to Redis',
      );
    } finally {
      client.removeListener('ready', onReady);
    }
  }

  private async readEpoch(): Promise<void> {
    this.history.currentEpoch = (await this.run(EPOCH, [this.keys.epoch], [newEpoch()])) as string;
  }

  private async beat(rewrite = this.dirty, retry = true): Promise<void> {
    // Counts that failed are settled first where they can be. A rewrite does not lose their
    // crossings (a settle decides from the count before the first failed call, not from
    // the hash), so it goes ahead whether or not some still wait.
    await this.settle();
    const first = this.firstBeat ? '1' : '0';
    const drop = Date.now() >= this.dropFrom ? '1' : '0';
    const args: (string | number)[] = [this.nodeId, this.nodeTimeoutMs, this.keys.presencePrefix, rewrite ? '1' : '0', this.keys.roomsPrefix, this.keys.dropPrefix, DROP_MARK_MS, first, drop];
    if (rewrite) for (const [user, count] of this.counts) args.push(user, count, this.userRooms.get(user) ?? '');
    if (rewrite) this.dirty = false;
    let reply: unknown;
    try {
      reply = await this.run(HEARTBEAT, [this.keys.nodes, ...this.ownKeys], args);
    } catch (error) {
      if (rewrite) this.dirty = true;
      throw error;
    }
    const wasFirst = this.firstBeat;
    this.firstBeat = false;
    if (reply === -1) {
      // Stale or dropped: beat again with the counts rewritten, in one step.
      this.stale = true;
      if (retry) await this.beat(true, false);
      return;
    }
    if (rewrite && this.stale) {
      this.stale = false;
      this.settleFrom = Date.now() + this.heartbeatMs;
    }
    const [lost, marked, back, fresh] = reply as [string[], string[], string[], number];
    // Back from a stale heartbeat: the others cut off with it get as long to beat again
    // as any process does before it drops them (see `dropFrom`).
    if (fresh === 0 && !wasFirst) this.dropFrom = Date.now() + this.nodeTimeoutMs;
    // Dropped while cut off: the cluster no longer counted these users' connections here
    // (the survivors said offline where no other process had them). The rewrite decided
    // them again (back), so the counts still waiting for them are answered as no crossing.
    for (const user of marked) {
      for (const call of this.unsettled.get(user) ?? []) call.resolve(false);
      this.unsettled.delete(user);
    }
    const users: LostUser[] = [];
    for (let i = 0; i + 1 < lost.length; i += 2) users.push({ user: lost[i] as string, rooms: lostRooms(lost[i + 1] as string) });
    if (users.length > 0) this.handlers?.presence('offline', users);
    if (back.length > 0) this.handlers?.presence('online', back.map((user) => ({ user, rooms: [] })));
  }

  private async track(user: string, delta: 1 | -1, rooms?: readonly string[]): Promise<boolean> {
    const next = (this.counts.get(user) ?? 0) + delta;
    if (next > 0) this.counts.set(user, next);
    else this.counts.delete(user);
    if (next <= 0) this.userRooms.delete(user);
    else if (next === 1 && delta === 1 && rooms) this.userRooms.set(user, JSON.stringify(rooms));
    if (this.closed) return false;
    const waiting = this.unsettled.get(user);
    if (waiting) {
      // An earlier count of the user has not reached Redis: the cluster last knew the
      // count before that one, so this call is decided with it, by the same write. Written
      // alone with next - delta as the count before, a stale node would take a close and
      // reopen for an offline then an online (or an open and close for an offline alone).
      return new Promise<boolean>((resolve) => {
        waiting.push({ delta, before: next - delta, resolve });
        void this.settle().catch((error: unknown) => this.handlers?.error(asError(error), 'presence'));
      });
    }
    try {
      return (await this.writeCount(user, next - delta)) === 1;
    } catch (error) {
      // Answered by a later write (see `settle`): a last close during a blip of Redis
      // still says offline once Redis is back, instead of the rewrite dropping the user
      // without a word.
      this.dirty = true;
      this.handlers?.error(asError(error), 'presence');
      return new Promise<boolean>((resolve) => {
        const waiting = this.unsettled.get(user) ?? [];
        waiting.push({ delta, before: next - delta, resolve });
        this.unsettled.set(user, waiting);
      });
    }
  }

  /**
   * Writes this node's count of `user`: 1 when that made the user online or offline in the
   * cluster, 0 when not, {@link STALE} (a settle only) when nothing was written. `before`
   * is the count the cluster last knew from this node, for when Redis may no longer hold
   * it (see TRACK); `settling`, to decide from it in any case.
   */
  private async writeCount(user: string, before: number, settling = false): Promise<number> {
    const args = [user, this.counts.get(user) ?? 0, this.nodeTimeoutMs * 2, this.nodeId, this.nodeTimeoutMs, this.keys.presencePrefix, before, settling ? '1' : '0', this.userRooms.get(user) ?? ''];
    const [counts, rooms, dropMark] = this.ownKeys;
    // Bounded: a heartbeat waits for settle's writes, so one that hung would stop the beats.
    return Number(await withTimeout(this.run(TRACK, [counts, this.keys.nodes, rooms, dropMark], args), this.commandTimeoutMs, 'presence'));
  }

  /**
   * Writes the counts that failed, each user's current one, and answers their `track`
   * calls: a crossing goes to the latest call in its direction (one `offline` for two
   * closes), every other call gets false. The crossing is decided from the count before
   * the first failed call (see TRACK), not from Redis's: after an outage longer than
   * `nodeTimeoutMs` the other processes have dropped this one's counts, and a write whose
   * reply was lost ran in Redis with its crossing. A last close is still an `offline`,
   * late rather than never.
   */
  private settle(): Promise<void> {
    // One at a time, and a heartbeat waits for the one under way, so the beat comes after
    // the counts it wrote (and finds the node stale, if it did).
    return (this.settling ??= this.settleNow().finally(() => {
      this.settling = undefined;
    }));
  }

  private async settleNow(): Promise<void> {
    if (this.stale || Date.now() < this.settleFrom) return;
    for (const [user, waiting] of [...this.unsettled]) {
      // The direction of the count written now, not of one a later track() sets meanwhile.
      const online = this.counts.has(user);
      // Taken out first: a track() that fails meanwhile starts a new entry, for the next settle.
      this.unsettled.delete(user);
      // Back in front of any call a track() added meanwhile, for the next settle.
      const putBack = (): void => void this.unsettled.set(user, [...waiting, ...(this.unsettled.get(user) ?? [])]);
      let reply: number;
      try {
        reply = await this.writeCount(user, waiting[0]?.before ?? 0, true);
      } catch (error) {
        putBack();
        throw error;
      }
      if (reply === STALE) {
        // Decided once this node has beaten again (see `stale`).
        putBack();
        this.stale = true;
        this.dirty = true;
        return;
      }
      const crossed = reply === 1;
      const answered = crossed ? waiting.findLast((call) => (call.delta === 1) === online) : undefined;
      for (const call of waiting) call.resolve(call === answered);
    }
  }

  private onMessage(channel: string, payload: string): void {
    const handlers = this.handlers;
    if (!handlers) return;
    try {
      if (channel === this.keys.control) {
        const { node, change } = JSON.parse(payload) as { node: string; change: MembershipChange };
        if (node !== this.nodeId) handlers.membership(change);
        return;
      }
      if (!channel.startsWith(this.keys.roomChannelPrefix)) return;
      const newline = payload.indexOf('\n');
      const message = parseMessage(payload.slice(newline + 1), Number(payload.slice(0, newline)));
      handlers.message(message, message.except);
    } catch (error) {
      handlers.error(asError(error), 'message');
    }
  }

  /**
   * After the subscriber reconnects. ioredis resubscribes by itself; subscribing again
   * here makes the reply order tell when that is done, before the manager refills.
   */
  private async resubscribe(): Promise<void> {
    const handlers = this.handlers;
    if (!handlers || this.closed) return;
    try {
      const rooms = [...this.rooms].map((room) => this.keys.channel(room));
      await withTimeout(
        this.subscriber.ssubscribe(this.keys.control, ...rooms),
        this.commandTimeoutMs,
        'resubscribe',
      );
    } catch (error) {
      handlers.error(asError(error), 'resubscribe');
    }
    await this.afterReconnect();
  }

  /**
   * Reads the epoch from the Redis that is back, then tells the manager, which refills
   * its rooms, or closes every connection when the epoch is new (Redis lost its data). The
   * command connection reconnects on its own schedule: until the read succeeds it is
   * tried again at every heartbeat, and the manager is not told with an epoch that may be
   * the lost one's.
   */
  private async afterReconnect(): Promise<void> {
    if (this.epochRead === 'reading' || this.closed) return;
    this.epochRead = 'reading';
    try {
      await this.ready(this.redis);
      await this.readEpoch();
    } catch (error) {
      this.epochRead = 'pending';
      this.handlers?.error(asError(error), 'resubscribe');
      return;
    }
    this.epochRead = 'done';
    this.dirty = true;
    this.handlers?.reconnected();
  }
}
