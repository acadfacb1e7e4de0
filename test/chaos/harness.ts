import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import WebSocket from 'ws';
import type { Backplane } from 'roomwire';
import { connect, type ClientError, type RoomMessage, type RoomwireClient, type WebSocketConstructor } from 'roomwire/client';
import { RedisBackplane } from 'roomwire/redis';
import { deleteKeys } from '../helpers/redis.js';
import { MembershipTable, startServer, tokenFor, type TestServer } from '../helpers/server.js';
import { seededRandom, sleep } from '../reliability/support.js';
import { ChaosProxy } from './proxy.js';

/** The Redis the two-server setup shares (with other test runs: keys live under a prefix of the run's own). */
export const REDIS = { host: '127.0.0.1', port: 6379 } as const;

/** What one chaos run does. */
export interface ChaosConfig {
  /** Seeds every random choice of the run: faults, their targets and lengths, the clients' operations. */
  seed: number;
  /** How long faults and client operations go on, in ms. */
  durationMs: number;
  /** 1: one server with in-memory history. 2: two servers sharing a Redis backplane; the proxy sends each connection to either. */
  servers: 1 | 2;
  /** The servers' `heartbeatMs`; a stall lasts 0.5 to 3.5 of it. */
  heartbeatMs: number;
  /** How many clients; users u0 to u5 in turn, so several clients share a user. */
  clients: number;
  /** Probability that a client's next operation is a join or leave (else a publish). */
  churn: number;
  /** Wait between two faults, a random value in this range, in ms. */
  faultEveryMs: readonly [number, number];
  /** The clients' `heartbeatMs` option (default: what the server's welcome says). */
  clientHeartbeatMs?: number | undefined;
  /** Join and leave without waiting for the previous call on the room to settle; publish right after a join. */
  racy?: boolean | undefined;
  /** The clients' `publishTimeoutMs` (default 120 s); a publish that times out is retried with the same `cid` while the client is still in the room. */
  publishTimeoutMs?: number | undefined;
  /** History kept per room by the single server (default 100,000: no gaps). */
  history?: number | undefined;
  /** Probability that a publish carries 20 to 60 KB of padding, so its frame spans many TCP chunks. */
  big?: number | undefined;
  /** The servers remove and re-add users of room `m0` (`removeMember`/`addMember`) every 0.3 to 1 s. */
  members?: boolean | undefined;
  /** Write the event logs here even when the run passes (by default only a failed run writes them, into a fresh directory under the OS temp dir). */
  logDir?: string | undefined;
}

/** Counts of one run, printed as one `chaos {…}` line. */
export interface ChaosStats {
  seed: number;
  servers: 1 | 2;
  publishes: number;
  acked: number;
  /** Rejected publishes by error code. */
  publishErrors: Record<string, number>;
  /** `error` events of the clients by code (`unreachable` counts failed connection attempts). */
  clientErrors: Record<string, number>;
  gaps: number;
  welcomes: number;
  messages: number;
  /** Faults injected by kind, and `refused`: connection attempts refused. */
  faults: Record<string, number>;
  /** Publishes that timed out and were sent again with their `cid`. */
  retried: number;
  /** Rooms whose join or leave failed, so the client's membership there is unknown and not checked. */
  uncertain: number;
}

/** What a run found. */
export interface ChaosResult {
  /** Every invariant broken (the first 200); empty when the run passed. */
  violations: string[];
  stats: ChaosStats;
  /** Where the event logs were written: set when the run failed or `logDir` was given. */
  logDir: string | undefined;
}

/** How long {@link runChaos} may take at most for `durationMs` of faults: every wait after the faults is bounded. */
export function chaosBoundMs(durationMs: number): number {
  return durationMs + OPEN_MS + SETTLE_MS + FLUSH_MS + DELIVERY_MS + 20_000;
}

/** The clients must be open this long after they are created. */
const OPEN_MS = 10_000;
/** After the faults stop, every publish must settle and every client be open within this. */
const SETTLE_MS = 30_000;
/** The flush publishes must be acknowledged within this. */
const FLUSH_MS = 15_000;
/** Every message a client must have must arrive within this after the flush. */
const DELIVERY_MS = 10_000;

const USERS = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'];
/** Rooms the users participate in: each client is put in them at connect (auto-join). */
const OWN_ROOMS: Record<string, string[]> = {
  r0: ['u0', 'u1', 'u2', 'u3'],
  r1: ['u2', 'u3', 'u4', 'u5'],
  r2: ['u0', 'u1', 'u4', 'u5'],
  r3: ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'],
  m0: ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'],
};
/** Rooms anyone may join. */
const PUBLIC_ROOMS = ['p0', 'p1'];
/** Rooms the clients join and leave: the public ones, and r3, an own room everyone can leave and join again. */
const CHURN_ROOMS = [...PUBLIC_ROOMS, 'r3'];

interface Publish {
  client: number;
  room: string;
  cid: string;
  calledAt: number;
  settledAt?: number;
  ack?: { id: string; seq: number };
  error?: string;
  retries?: number;
}

interface Interest {
  /** Every acknowledged message of the room with a seq above this (not the client's own) must arrive. */
  since: number;
}

/** One client and what the app around it believes. */
interface Participant {
  index: number;
  user: string;
  client: RoomwireClient;
  messages: RoomMessage[];
  gaps: { room: string; at: number }[];
  errors: ClientError[];
  welcomes: number;
  /** The rooms the app believes it is in: its own rooms, plus those it joined, minus those it left. */
  want: Set<string>;
  /** The rooms whose messages it must get, and since which seq. */
  interest: Map<string, Interest>;
  /** Rooms with a join or leave in flight. */
  busy: Set<string>;
  pendingOps: number;
  /** Rooms whose join or leave failed: the client's membership there is unknown, so not checked. */
  uncertain: Set<string>;
  /** What happened to this client, one line each, for the logs. */
  events: string[];
}

/**
 * Runs `clients` roomwire clients through a {@link ChaosProxy} against one server, or two
 * servers on a Redis backplane, for `durationMs`. Meanwhile each client, every 50 to
 * 300 ms, publishes into a room it is in (with a `cid`) or joins or leaves one of p0, p1,
 * r3, and the proxy injects a fault every `faultEveryMs`. Then the faults stop; every
 * publish must settle and every client be open again (within 30 s); each client publishes
 * a marker into each of its rooms; then the invariants are checked:
 *
 * - every publish settles: acknowledged, or rejected, and then for a reason the harness
 *   allows (a timeout; `forbidden` in a room whose join failed, or in m0 under `members`);
 * - every marker is acknowledged;
 * - no two publishes get one id, no two ids one seq of a room;
 * - each client gets each message at most once, in increasing seq per room, under the id
 *   and seq its publisher's ack said, and never its own acknowledged publish;
 * - completeness: each client gets every acknowledged message of every room it is in with
 *   a seq above the one it joined at, unless a `gap` event for the room excused it;
 * - a rejected publish reached nobody;
 * - each client ends in the rooms the app believes it is in, and the server agrees;
 * - the servers emit no `error` event (a broadcast reaching a socket already closing raises none).
 *
 * Everything it opens (servers, proxy, sockets, timers, Redis connections and keys) is
 * closed or deleted before it returns or throws. A failed run (violations, or an error)
 * writes each client's event log and the fault log to a fresh directory under the OS temp
 * dir, named in the result or the error; `logDir` writes them there in any case.
 */
export async function runChaos(cfg: ChaosConfig): Promise<ChaosResult> {
  const rand = seededRandom(cfg.seed);
  const opRand = seededRandom(cfg.seed ^ 0x5eed);
  const membership = new MembershipTable(OWN_ROOMS);
  for (const room of PUBLIC_ROOMS) membership.canJoinRooms.add(room);
  const prefix = `roomwire-chaos:${process.pid}:${cfg.seed}:${Date.now().toString(36)}`;
  const redisConnections: Redis[] = [];
  const servers: TestServer[] = [];
  const serverErrors: string[] = [];
  const participants: Participant[] = [];
  let proxy: ChaosProxy | undefined;
  const start = Date.now();
  let result: ChaosResult | undefined;
  try {
    for (let i = 0; i < cfg.servers; i++) {
      const backplane = cfg.servers > 1 ? await redisBackplane(prefix, redisConnections) : undefined;
      const server = await startServer({
        membership,
        heartbeatMs: cfg.heartbeatMs,
        ...(backplane ? { backplane } : { history: cfg.history ?? 100_000 }),
        publishRate: { burst: 200, perSecond: 100 },
      });
      server.manager.on('error', (e: Error, context: unknown) => serverErrors.push(`server${i} error event: ${e.message} ${JSON.stringify(context)}`));
      servers.push(server);
    }
    proxy = new ChaosProxy(
      servers.map((s) => s.port),
      rand,
      cfg.heartbeatMs,
    );
    const url = `ws://127.0.0.1:${await proxy.start()}/ws`;
    for (let i = 0; i < cfg.clients; i++) participants.push(await participant(i, url, cfg, membership, start));
    result = await run(cfg, { rand, opRand, membership, servers, serverErrors, participants, proxy, start });
  } catch (error) {
    const logDir = writeLogs(cfg, participants, proxy, start, [`error: ${String(error)}`]);
    throw new Error(`chaos run seed ${cfg.seed} servers ${cfg.servers} failed: ${String(error)}; event logs in ${logDir}`, { cause: error });
  } finally {
    for (const p of participants) p.client.close();
    await proxy?.close();
    // Every server is closed, and Redis cleaned, even when one close fails; the failure is thrown after.
    const closed = await Promise.allSettled(servers.map((server) => server.close()));
    for (const connection of redisConnections) connection.disconnect();
    if (cfg.servers > 1) await deleteRunKeys(prefix);
    const failed = closed.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
  }
  if (result.violations.length > 0 || cfg.logDir !== undefined) {
    result.logDir = writeLogs(cfg, participants, proxy, start, [...result.violations.map((v) => `violation: ${v}`), `stats: ${JSON.stringify(result.stats)}`]);
  }
  return result;
}

/** A Redis backplane with two fresh connections (tracked in `connections`), once both are ready. */
async function redisBackplane(prefix: string, connections: Redis[]): Promise<Backplane> {
  // As in production: fail fast while Redis is away (a publish fails to its publisher, not queued).
  const open = (): Redis => {
    const connection = new Redis({ ...REDIS, enableOfflineQueue: false, autoResendUnfulfilledCommands: false, retryStrategy: () => 100, maxRetriesPerRequest: 1 });
    connection.on('error', () => {});
    connections.push(connection);
    return connection;
  };
  const redis = open();
  const subscriber = open();
  for (const connection of [redis, subscriber]) {
    if (connection.status === 'ready') continue;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        connection.once('ready', resolve);
        timer = setTimeout(() => reject(new Error(`Redis on ${REDIS.host}:${REDIS.port} not ready within 5 s`)), 5_000);
      });
    } finally {
      clearTimeout(timer);
    }
  }
  return new RedisBackplane({ redis, subscriber, prefix, historyLimit: 100_000 });
}

/** Deletes this run's keys, and only them (the Redis is shared). */
async function deleteRunKeys(prefix: string): Promise<void> {
  const admin = new Redis({ ...REDIS, maxRetriesPerRequest: 1, connectTimeout: 2_000, retryStrategy: () => null });
  admin.on('error', () => {});
  try {
    await deleteKeys(admin, prefix);
  } finally {
    admin.disconnect();
  }
}

/** Connects client `index` through the proxy and records what it sees. */
async function participant(index: number, url: string, cfg: ChaosConfig, membership: MembershipTable, start: number): Promise<Participant> {
  const user = USERS[index % USERS.length]!;
  const token = await tokenFor(user);
  const client = connect({
    url,
    token: () => token,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    reconnect: { minDelayMs: 20, maxDelayMs: 400 },
    publishTimeoutMs: cfg.publishTimeoutMs ?? 120_000,
    queueLimit: 1000,
    ...(cfg.clientHeartbeatMs !== undefined ? { heartbeatMs: cfg.clientHeartbeatMs } : {}),
  });
  const own = Object.keys(OWN_ROOMS).filter((room) => OWN_ROOMS[room]!.includes(user));
  const p: Participant = {
    index,
    user,
    client,
    messages: [],
    gaps: [],
    errors: [],
    welcomes: 0,
    want: new Set(own),
    interest: new Map(own.map((room) => [room, { since: 0 }])),
    busy: new Set(),
    pendingOps: 0,
    uncertain: new Set(),
    events: [],
  };
  const event = (line: string): void => {
    p.events.push(`${Date.now() - start} ${line}`);
  };
  client.on('message', (m) => {
    p.messages.push(m);
    event(`msg ${m.room} ${m.seq} ${(m.data as MessageData).cid}`);
  });
  client.on('gap', ({ room }) => {
    p.gaps.push({ room, at: Date.now() });
    event(`gap ${room}`);
  });
  client.on('error', (e) => {
    p.errors.push(e);
    if (e.code !== 'unreachable') event(`error ${e.code} ${e.room ?? ''} ${e.message}`);
  });
  client.on('state', (state) => event(`state ${state}`));
  client.on('welcome', (w) => {
    p.welcomes++;
    event(`welcome ${w.connectionId} rooms=${[...client.rooms].join(',')}`);
  });
  client.on('joined', (e) => event(`joined ${e.room} ${e.seq}`));
  client.on('left', (e) => event(`left ${e.room}`));
  if (cfg.members) trackM0(p, membership);
  return p;
}

/**
 * Under `members` the servers put the client in m0 and take it out: it wants m0 from a
 * `joined` (or a welcome that has m0 again) while its user is a participant, from the seq
 * it joined at, and stops wanting it at `left`.
 */
function trackM0(p: Participant, membership: MembershipTable): void {
  const isMember = (): boolean => membership.rooms.get('m0')!.has(p.user);
  let knew = false;
  p.client.on('joined', (e) => {
    if (e.room !== 'm0') return;
    knew = true;
    if (isMember()) {
      p.want.add('m0');
      p.interest.set('m0', { since: e.seq });
    }
  });
  p.client.on('left', (e) => {
    if (e.room !== 'm0') return;
    knew = false;
    p.interest.delete('m0');
  });
  p.client.on('welcome', () => {
    const has = p.client.rooms.has('m0');
    if (has && !knew && isMember()) {
      p.want.add('m0');
      p.interest.set('m0', { since: p.client.lastSeq('m0') });
    }
    knew = has;
  });
}

interface MessageData {
  cid: string;
  from: number;
  pad?: string;
}

interface Run {
  rand: () => number;
  opRand: () => number;
  membership: MembershipTable;
  servers: TestServer[];
  serverErrors: string[];
  participants: Participant[];
  proxy: ChaosProxy;
  start: number;
}

/** The run proper: chaos for `durationMs`, settling, the flush, the checks. */
async function run(cfg: ChaosConfig, { rand, opRand, membership, servers, serverErrors, participants: ps, proxy, start }: Run): Promise<ChaosResult> {
  const violations: string[] = [];
  const violate = (v: string): void => {
    if (violations.length < 200) violations.push(v);
  };
  const t = (): number => Date.now() - start;
  const openBy = Date.now() + OPEN_MS;
  while (ps.some((p) => p.client.state !== 'open')) {
    if (Date.now() > openBy) throw new Error(`clients not open within ${OPEN_MS} ms before the faults began`);
    await sleep(10);
  }

  const pubs: Publish[] = [];
  let n = 0;
  const publish = (p: Participant, room: string): Publish => {
    const cid = `c${p.index}-${++n}`;
    const pub: Publish = { client: p.index, room, cid, calledAt: Date.now() };
    p.events.push(`${t()} publish ${cid} ${room}`);
    pubs.push(pub);
    const data: MessageData = { cid, from: p.index };
    if (cfg.big && opRand() < cfg.big) data.pad = 'x'.repeat(20_000 + Math.floor(opRand() * 40_000));
    const attempt = (tries: number): void => {
      p.client.publish(room, data, { cid }).then(
        (ack) => {
          pub.ack = { id: ack.id, seq: ack.seq };
          if (ack.room !== room) violate(`ack room mismatch ${ack.room} != ${room}`);
          pub.settledAt = Date.now();
        },
        (e: ClientError) => {
          pub.error = `${e.code}: ${e.message}`;
          p.events.push(`${t()} publish ${cid} ${room} failed ${pub.error} (try ${tries})`);
          // Bounded: at most 20 tries, each bounded by publishTimeoutMs.
          if (e.code === 'timeout' && tries < 20 && p.want.has(room) && !p.busy.has(room)) {
            pub.retries = tries;
            attempt(tries + 1);
            return;
          }
          if (e.code === 'timeout') p.events.push(`${t()} publish ${cid} gave up`);
          else if (!(e.code === 'forbidden' && (p.uncertain.has(room) || room === 'm0'))) {
            violate(`client ${p.index} publish ${cid} into ${room} (called at ${pub.calledAt - start}) rejected: ${pub.error}${p.want.has(room) ? '' : ' (room left since)'}`);
          }
          pub.settledAt = Date.now();
        },
      );
    };
    attempt(1);
    return pub;
  };

  const lastOp = new Map<string, number>();
  let opCount = 0;
  const churn = (p: Participant): void => {
    const candidates = CHURN_ROOMS.filter((room) => (cfg.racy || !p.busy.has(room)) && !p.uncertain.has(room) && (room !== 'r3' || OWN_ROOMS.r3!.includes(p.user)));
    if (candidates.length === 0) return;
    const room = candidates[Math.floor(opRand() * candidates.length)]!;
    const key = `${p.index}/${room}`;
    const op = ++opCount;
    lastOp.set(key, op);
    p.busy.add(room);
    p.pendingOps++;
    const done = (): void => {
      p.pendingOps--;
      if (lastOp.get(key) === op) p.busy.delete(room);
    };
    const failed = (what: string) => (e: ClientError) => {
      p.uncertain.add(room);
      p.events.push(`${t()} app ${what} failed ${room} ${e.code}`);
    };
    if (p.want.has(room)) {
      // The interest ends when the app calls leave.
      p.want.delete(room);
      p.interest.delete(room);
      p.events.push(`${t()} app leave ${room}`);
      p.client
        .leave(room)
        .then(() => void p.events.push(`${t()} app left ${room}`), failed('leave'))
        .finally(done);
    } else {
      p.events.push(`${t()} app join ${room}`);
      if (cfg.racy) p.want.add(room);
      p.client
        .join(room)
        .then(({ seq }) => {
          p.events.push(`${t()} app joined ${room} ${seq}`);
          if (lastOp.get(key) !== op) return;
          p.want.add(room);
          p.interest.set(room, { since: seq });
        }, failed('join'))
        .finally(done);
      if (cfg.racy && opRand() < 0.5) publish(p, room);
    }
  };

  // Chaos: the loops run until `running` turns false, each turn bounded by a sleep.
  let running = true;
  const clientLoops = ps.map(async (p) => {
    while (running) {
      await sleep(50 + Math.floor(opRand() * 250));
      if (!running) break;
      if (opRand() < cfg.churn) churn(p);
      else {
        const rooms = [...p.want].filter((room) => (cfg.racy || !p.busy.has(room)) && !p.uncertain.has(room) && (room !== 'm0' || membership.rooms.get('m0')!.has(p.user)));
        if (rooms.length > 0) publish(p, rooms[Math.floor(opRand() * rooms.length)]!);
      }
    }
  });
  const memberLoop = (async () => {
    while (cfg.members && running) {
      await sleep(300 + Math.floor(rand() * 700));
      if (!running) break;
      const user = USERS[Math.floor(rand() * USERS.length)]!;
      const manager = servers[Math.floor(rand() * servers.length)]!.manager;
      const mine = ps.filter((p) => p.user === user);
      if (membership.rooms.get('m0')!.has(user)) {
        membership.remove('m0', user);
        for (const p of mine) {
          p.want.delete('m0');
          p.interest.delete('m0');
          p.events.push(`${t()} server removeMember m0`);
        }
        await manager.removeMember('m0', user);
      } else {
        membership.add('m0', user);
        for (const p of mine) p.events.push(`${t()} server addMember m0`);
        await manager.addMember('m0', user);
      }
    }
  })();
  const faultLoop = (async () => {
    const [min, max] = cfg.faultEveryMs;
    while (running) {
      await sleep(min + Math.floor(rand() * (max - min)));
      if (!running) break;
      proxy.fault();
    }
  })();
  await sleep(cfg.durationMs);
  running = false;
  await Promise.all([faultLoop, memberLoop, ...clientLoops]);
  proxy.calm();

  // Settling: every publish settles, every client is open with no join or leave in flight.
  const settledBy = Date.now() + SETTLE_MS;
  while (Date.now() < settledBy && (pubs.some((pub) => pub.settledAt === undefined) || ps.some((p) => p.client.state !== 'open' || p.pendingOps > 0))) await sleep(20);
  for (const pub of pubs) if (pub.settledAt === undefined) violate(`publish hangs ${SETTLE_MS} ms after faults stopped: client ${pub.client} room ${pub.room} cid ${pub.cid} called at ${pub.calledAt - start}`);
  for (const p of ps) if (p.client.state !== 'open') violate(`client ${p.index} (${p.user}) not open ${SETTLE_MS} ms after faults: ${p.client.state}`);
  for (const p of ps) if (p.pendingOps > 0) violate(`client ${p.index} join/leave still pending: ${[...p.busy].join(',')}`);

  // The flush: a marker from each client into each room it is in, the last message of the run.
  const markers: Publish[] = [];
  for (const p of ps) for (const room of p.want) if (!p.uncertain.has(room)) markers.push(publish(p, room));
  const flushedBy = Date.now() + FLUSH_MS;
  while (Date.now() < flushedBy && markers.some((m) => m.settledAt === undefined)) await sleep(20);
  for (const m of markers) if (!m.ack) violate(`marker publish not acked: client ${m.client} room ${m.room}: ${m.error ?? 'pending'}`);

  // An ack says the message was sent, not that every member has read it yet: wait (bounded)
  // until nothing is missing rather than a fixed time, which a loaded machine can exceed.
  const deliveredBy = Date.now() + DELIVERY_MS;
  let missing = missingMessages(ps, pubs);
  while (missing.length > 0 && Date.now() < deliveredBy) {
    await sleep(50);
    missing = missingMessages(ps, pubs);
  }

  // ---- The checks.
  const byCid = new Map<string, Publish>();
  const byId = new Map<string, Publish>();
  const seqOwner = new Map<string, string>();
  for (const pub of pubs) {
    byCid.set(pub.cid, pub);
    if (!pub.ack) continue;
    const sameId = byId.get(pub.ack.id);
    if (sameId) violate(`two publishes acked with one id ${pub.ack.id}: ${sameId.cid} and ${pub.cid}`);
    byId.set(pub.ack.id, pub);
    const seqKey = `${pub.room}#${pub.ack.seq}`;
    const sameSeq = seqOwner.get(seqKey);
    if (sameSeq && sameSeq !== pub.ack.id) violate(`two ids with one seq ${seqKey}: ${sameSeq} ${pub.ack.id}`);
    seqOwner.set(seqKey, pub.ack.id);
  }

  for (const p of ps) {
    const seen = new Set<string>();
    const lastSeq = new Map<string, number>();
    const cidToId = new Map<string, string>();
    for (const m of p.messages) {
      if (seen.has(m.id)) violate(`client ${p.index} saw id ${m.id} twice (room ${m.room} seq ${m.seq})`);
      seen.add(m.id);
      const prev = lastSeq.get(m.room) ?? 0;
      if (m.seq <= prev) violate(`client ${p.index} room ${m.room}: seq ${m.seq} after ${prev}`);
      lastSeq.set(m.room, Math.max(prev, m.seq));
      const data = m.data as MessageData;
      const prior = cidToId.get(data.cid);
      if (prior && prior !== m.id) violate(`client ${p.index}: cid ${data.cid} delivered under two ids ${prior} ${m.id}`);
      cidToId.set(data.cid, m.id);
      const pub = byCid.get(data.cid);
      if (pub?.ack && (pub.ack.id !== m.id || pub.ack.seq !== m.seq)) violate(`client ${p.index}: cid ${data.cid} acked as ${pub.ack.id}/${pub.ack.seq} but delivered as ${m.id}/${m.seq}`);
      if (data.from === p.index && pub?.ack) violate(`client ${p.index} received its own acked publish ${data.cid} as a message (room ${m.room} seq ${m.seq})`);
    }
  }

  for (const line of missing.slice(0, 40)) violate(line);
  if (missing.length > 40) violate(`... ${missing.length - 40} more missing`);

  // A rejected publish reached nobody (a timeout may have been delivered; a room whose join or leave failed is unknown).
  for (const pub of pubs) {
    if (pub.ack || !pub.error || pub.error.startsWith('timeout') || ps[pub.client]!.uncertain.has(pub.room)) continue;
    const got = ps.filter((p) => p.messages.some((m) => (m.data as MessageData).cid === pub.cid)).map((p) => p.index);
    if (got.length > 0) violate(`publish ${pub.cid} into ${pub.room} rejected (${pub.error}) but delivered to clients ${got.join(',')}`);
  }

  // Final membership, as the client sees it and as the server does.
  for (const p of ps) {
    const expectedRooms = new Set(p.want);
    const inM0 = cfg.members ? membership.rooms.get('m0')!.has(p.user) : p.want.has('m0');
    if (inM0) expectedRooms.add('m0');
    else expectedRooms.delete('m0');
    const expected = [...expectedRooms].filter((room) => !p.uncertain.has(room)).sort();
    const got = [...p.client.rooms].filter((room) => !p.uncertain.has(room)).sort();
    if (expected.join() !== got.join()) violate(`client ${p.index} (${p.user}) rooms ${got.join(',')} expected ${expected.join(',')}`);
    const id = p.client.connectionId;
    if (id) {
      const onServer = servers.map((s) => s.manager.roomsOf(id)).find((rooms) => rooms.length > 0) ?? [];
      const server = onServer.filter((room) => !p.uncertain.has(room)).sort();
      if (server.join() !== expected.join()) violate(`client ${p.index} (${p.user}) server view ${server.join(',')} expected ${expected.join(',')}`);
    }
  }

  // A write to a socket already closing is routine and raises none (Connection.send returns false).
  for (const e of serverErrors) violate(e);

  const stats = statsOf(cfg, pubs, ps, proxy);
  console.log(`chaos ${JSON.stringify(stats)}`);
  if (violations.length > 0) {
    const involved = new Set<number>();
    for (const v of violations) {
      const match = /client (\d+)/.exec(v);
      if (match) involved.add(Number(match[1]));
    }
    for (const i of [...involved].slice(0, 3)) console.log(`client ${i} events (the last 80):\n  ${ps[i]!.events.slice(-80).join('\n  ')}`);
  }
  // A copy: closing the clients afterwards rejects what is still pending, which was judged above.
  return { violations: [...violations], stats, logDir: undefined };
}

/**
 * Completeness: for each client, the acknowledged messages of others in each room it is
 * in, with a seq above its `since`, that it has not received and that no `gap` event of
 * the room (at most 1 s before the publish was called, or later) excuses.
 */
function missingMessages(ps: readonly Participant[], pubs: readonly Publish[]): string[] {
  const missing: string[] = [];
  for (const p of ps) {
    const seen = new Set(p.messages.map((m) => m.id));
    for (const [room, { since }] of p.interest) {
      if (p.uncertain.has(room)) continue;
      for (const pub of pubs) {
        if (!pub.ack || pub.room !== room || pub.client === p.index || pub.ack.seq <= since || seen.has(pub.ack.id)) continue;
        if (p.gaps.some((g) => g.room === room && g.at >= pub.calledAt - 1000)) continue;
        missing.push(`client ${p.index} (${p.user}) missed ${room} seq ${pub.ack.seq} (${pub.cid}) since=${since}`);
      }
    }
  }
  return missing;
}

function statsOf(cfg: ChaosConfig, pubs: readonly Publish[], ps: readonly Participant[], proxy: ChaosProxy): ChaosStats {
  const tally = (codes: string[]): Record<string, number> => {
    const counts: Record<string, number> = {};
    for (const code of codes) counts[code] = (counts[code] ?? 0) + 1;
    return counts;
  };
  return {
    seed: cfg.seed,
    servers: cfg.servers,
    publishes: pubs.length,
    acked: pubs.filter((pub) => pub.ack).length,
    publishErrors: tally(pubs.flatMap((pub) => (pub.error ? [pub.error.split(':')[0]!] : []))),
    clientErrors: tally(ps.flatMap((p) => p.errors.map((e) => e.code))),
    gaps: ps.reduce((sum, p) => sum + p.gaps.length, 0),
    welcomes: ps.reduce((sum, p) => sum + p.welcomes, 0),
    messages: ps.reduce((sum, p) => sum + p.messages.length, 0),
    faults: { ...proxy.counts },
    retried: pubs.filter((pub) => pub.retries).length,
    uncertain: ps.reduce((sum, p) => sum + p.uncertain.size, 0),
  };
}

/** Writes each client's events, the faults and `summary` into `cfg.logDir` or a fresh temp directory; returns the directory. */
function writeLogs(cfg: ChaosConfig, ps: readonly Participant[], proxy: ChaosProxy | undefined, start: number, summary: string[]): string {
  let dir: string;
  if (cfg.logDir === undefined) dir = mkdtempSync(join(tmpdir(), 'roomwire-chaos-'));
  else mkdirSync((dir = cfg.logDir), { recursive: true });
  const name = `servers${cfg.servers}-seed${cfg.seed}`;
  for (const p of ps) writeFileSync(join(dir, `${name}-c${p.index}.txt`), `${p.events.join('\n')}\n`);
  const faults = (proxy?.faults ?? []).map((f) => `${f.at - start} ${f.kind} ${f.pair ?? ''} ${f.ms ?? ''}`);
  writeFileSync(join(dir, `${name}-faults.txt`), `${faults.join('\n')}\n`);
  writeFileSync(join(dir, `${name}-summary.txt`), `${summary.join('\n')}\n`);
  return dir;
}
