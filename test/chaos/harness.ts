import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { Redis } from 'ioredis';
import { connect, type ClientError, type RoomMessage, type RoomwireClient } from 'roomwire/client';
import { RoomManager, type Backplane } from '../../src/index.js';
import { jwtAuthenticator } from '../../src/auth/jwt.js';
import { attachWebSocket, type WebSocketAdapter } from '../../src/transports/ws.js';
import { RedisBackplane } from '../../src/backplanes/redis.js';
import { MembershipTable, TEST_SECRET, tokenFor } from '../helpers/server.js';
import { seededRandom, sleep } from '../reliability/support.js';
import { ChaosProxy } from './proxy.js';

export interface ChaosConfig {
  seed: number;
  durationMs: number;
  servers: 1 | 2;
  heartbeatMs: number;
  clients: number;
  /** Probability per op of a join/leave (the rest publishes). */
  churn: number;
  faultEveryMs: [number, number];
  redisPort?: number | undefined;
  /** Client option heartbeatMs (undefined: take the server's). */
  clientHeartbeatMs?: number | undefined;
  log?: (line: string) => void;
  /** Join/leave without waiting for the previous call on the room; publish right after a join. */
  racy?: boolean | undefined;
  /** Client publishTimeoutMs; on timeout the app retries with the same cid. */
  publishTimeoutMs?: number | undefined;
  /** Single-server history size. */
  history?: number | undefined;
  /** Probability of a large (multi-chunk) payload. */
  big?: number | undefined;
  /** Server-side membership changes of room m0 (removeMember/addMember) during the run. */
  members?: boolean | undefined;
}

interface Srv {
  manager: RoomManager;
  server: Server;
  adapter: WebSocketAdapter;
  port: number;
  close(): Promise<void>;
}

async function startSrv(membership: MembershipTable, heartbeatMs: number, backplane?: Backplane, history = 100_000): Promise<Srv> {
  const manager = new RoomManager({
    authenticate: jwtAuthenticator({ secret: TEST_SECRET }),
    membership,
    heartbeatMs,
    ...(backplane ? {} : { history }),
    backplane,
    publishRate: { burst: 200, perSecond: 100 },
  });
  const server = createServer((_req, res) => res.writeHead(404).end());
  const adapter = attachWebSocket(manager, { server, path: '/ws' });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    manager,
    server,
    adapter,
    port,
    async close() {
      await manager.close();
      await adapter.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface Pub {
  client: number;
  room: string;
  cid: string;
  n: number;
  calledAt: number;
  settledAt?: number;
  ack?: { id: string; seq: number };
  error?: string;
  retries?: number;
}

interface Interest {
  /** Every acked message of the room with seq > since (not this client's) must arrive. */
  since: number;
  /** Time since which the client wants the room continuously. */
  from: number;
}

interface C {
  index: number;
  user: string;
  client: RoomwireClient;
  messages: RoomMessage[];
  gaps: { room: string; t: number }[];
  errors: ClientError[];
  welcomes: number;
  /** What the app believes it is in: auto rooms, plus joined, minus left. */
  want: Set<string>;
  interest: Map<string, Interest>;
  busy: Set<string>;
  pendingOps: number;
  uncertain: Set<string>;
  events: string[];
}

export interface ChaosResult {
  violations: string[];
  stats: Record<string, unknown>;
}

const USERS = ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'];
const OWN_ROOMS: Record<string, string[]> = {
  r0: ['u0', 'u1', 'u2', 'u3'],
  r1: ['u2', 'u3', 'u4', 'u5'],
  r2: ['u0', 'u1', 'u4', 'u5'],
  r3: ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'],
  m0: ['u0', 'u1', 'u2', 'u3', 'u4', 'u5'],
};
const PUBLIC_ROOMS = ['p0', 'p1'];

export async function runChaos(cfg: ChaosConfig): Promise<ChaosResult> {
  const log = cfg.log ?? ((line: string) => console.log(line));
  const rand = seededRandom(cfg.seed);
  const opRand = seededRandom(cfg.seed ^ 0x5eed);
  const violations: string[] = [];
  const violate = (v: string): void => {
    if (violations.length < 200) violations.push(v);
  };
  const membership = new MembershipTable(OWN_ROOMS);
  for (const room of PUBLIC_ROOMS) membership.canJoinRooms.add(room);

  const prefix = `chaos-hunt:${process.pid}:${cfg.seed}:${Date.now().toString(36)}`;
  const redisConns: Redis[] = [];
  const srvs: Srv[] = [];
  const serverErrors: string[] = [];
  for (let i = 0; i < cfg.servers; i++) {
    let backplane: Backplane | undefined;
    if (cfg.servers > 1) {
      const mk = (): Redis => {
        const r = new Redis({ host: '127.0.0.1', port: cfg.redisPort ?? 6379, enableOfflineQueue: false, autoResendUnfulfilledCommands: false, retryStrategy: () => 100, maxRetriesPerRequest: 1, lazyConnect: false });
        redisConns.push(r);
        return r;
      };
      const redis = mk();
      const subscriber = mk();
      await Promise.all([redis, subscriber].map((r) => new Promise<void>((resolve) => (r.status === 'ready' ? resolve() : r.once('ready', () => resolve())))));
      backplane = new RedisBackplane({ redis, subscriber, prefix, closeClients: false, historyLimit: 100_000 });
    }
    const s = await startSrv(membership, cfg.heartbeatMs, backplane, cfg.history);
    s.manager.on('error', (e: Error, ctx: unknown) => serverErrors.push(`server${i} error event: ${e.message} ${JSON.stringify(ctx)}`));
    srvs.push(s);
  }
  const proxy = new ChaosProxy(
    srvs.map((s) => s.port),
    rand,
    cfg.heartbeatMs,
  );
  const url = `ws://127.0.0.1:${await proxy.start()}/ws`;

  const pubs: Pub[] = [];
  const cs: C[] = [];
  const start = Date.now();
  const t = (): number => Date.now() - start;
  for (let i = 0; i < cfg.clients; i++) {
    const user = USERS[i % USERS.length]!;
    const token = await tokenFor(user);
    const client = connect({
      url,
      token: () => token,
      WebSocket: WebSocket as never,
      reconnect: { minDelayMs: 20, maxDelayMs: 400 },
      publishTimeoutMs: cfg.publishTimeoutMs ?? 120_000,
      queueLimit: 1000,
      ...(cfg.clientHeartbeatMs ? { heartbeatMs: cfg.clientHeartbeatMs } : {}),
    });
    const own = Object.entries(OWN_ROOMS)
      .filter(([, users]) => users.includes(user))
      .map(([room]) => room);
    const c: C = {
      index: i,
      user,
      client,
      messages: [],
      gaps: [],
      errors: [],
      welcomes: 0,
      want: new Set(own),
      interest: new Map(own.map((room) => [room, { since: 0, from: 0 }])),
      busy: new Set(),
      pendingOps: 0,
      uncertain: new Set(),
      events: [],
    };
    client.on('message', (m) => {
      c.messages.push(m);
      c.events.push(`${t()} msg ${m.room} ${m.seq} ${(m.data as { cid: string }).cid}`);
    });
    client.on('gap', ({ room }) => {
      c.gaps.push({ room, t: Date.now() });
      c.events.push(`${t()} gap ${room}`);
    });
    client.on('error', (e) => {
      c.errors.push(e);
      if (e.code !== 'unreachable') c.events.push(`${t()} error ${e.code} ${e.room ?? ''} ${e.message}`);
    });
    client.on('state', (st) => c.events.push(`${t()} state ${st}`));
    client.on('welcome', (w) => {
      c.welcomes++;
      c.events.push(`${t()} welcome ${w.connectionId} rooms=${[...client.rooms].join(',')}`);
    });
    client.on('joined', (e) => {
      c.events.push(`${t()} joined ${e.room} ${e.seq}`);
      if (e.room === 'm0' && membership.rooms.get('m0')!.has(user)) {
        c.want.add('m0');
        c.interest.set('m0', { since: e.seq, from: Date.now() });
      }
    });
    client.on('left', (e) => {
      c.events.push(`${t()} left ${e.room}`);
      if (e.room === 'm0') c.interest.delete('m0');
    });
    let knew = client.rooms.has('m0');
    client.on('welcome', () => {
      const has = client.rooms.has('m0');
      if (has && !knew && membership.rooms.get('m0')!.has(user)) {
        c.want.add('m0');
        c.interest.set('m0', { since: client.lastSeq('m0'), from: Date.now() });
      }
      knew = has;
    });
    client.on('left', (e) => {
      if (e.room === 'm0') knew = false;
    });
    client.on('joined', (e) => {
      if (e.room === 'm0') knew = true;
    });
    cs.push(c);
  }
  // All open before chaos starts.
  const deadline0 = Date.now() + 10_000;
  while (cs.some((c) => c.client.state !== 'open')) {
    if (Date.now() > deadline0) throw new Error('clients did not open');
    await sleep(10);
  }

  let chaos = true;
  let ops = true;
  let n = 0;
  const publish = (c: C, room: string): void => {
    const cid = `c${c.index}-${++n}`;
    const p: Pub = { client: c.index, room, cid, n, calledAt: Date.now() };
    c.events.push(`${t()} publish ${cid} ${room}`);
    pubs.push(p);
    const pad = cfg.big && opRand() < cfg.big ? 'x'.repeat(20_000 + Math.floor(opRand() * 40_000)) : undefined;
    const attempt = (tries: number): void => {
      c.client
        .publish(room, { cid, from: c.index, ...(pad ? { pad } : {}) }, { cid })
        .then(
          (ack) => {
            p.ack = { id: ack.id, seq: ack.seq };
            if (ack.room !== room) violate(`ack room mismatch ${ack.room} != ${room}`);
            p.settledAt = Date.now();
          },
          (e: ClientError) => {
            p.error = `${e.code}: ${e.message}`;
            c.events.push(`${t()} publish ${cid} ${room} failed ${p.error} (try ${tries})`);
            if (e.code === 'timeout' && tries < 20 && c.want.has(room) && !c.busy.has(room)) {
              p.retries = tries;
              attempt(tries + 1);
              return;
            }
            if (e.code === 'timeout') c.events.push(`${t()} publish ${cid} gave up`);
            else if (!(e.code === 'forbidden' && (c.uncertain.has(room) || room === 'm0'))) violate(`client ${c.index} publish ${cid} into ${room} (called at ${p.calledAt - start}) rejected: ${p.error}${c.want.has(room) ? '' : ' (room left since)'}`);
            p.settledAt = Date.now();
          },
        );
    };
    attempt(1);
  };
  const lastOp = new Map<string, number>();
  let opCount = 0;
  const churnOp = (c: C): void => {
    const candidates = [...PUBLIC_ROOMS, 'r3'].filter((room) => (cfg.racy || !c.busy.has(room)) && !c.uncertain.has(room) && (room !== 'r3' || OWN_ROOMS.r3!.includes(c.user)));
    if (candidates.length === 0) return;
    const room = candidates[Math.floor(opRand() * candidates.length)]!;
    const key = `${c.index}/${room}`;
    const op = ++opCount;
    lastOp.set(key, op);
    c.busy.add(room);
    c.pendingOps++;
    const done = (): void => {
      c.pendingOps--;
      if (lastOp.get(key) === op) c.busy.delete(room);
    };
    if (c.want.has(room)) {
      // Leave: interest ends now.
      c.want.delete(room);
      c.interest.delete(room);
      c.events.push(`${t()} app leave ${room}`);
      c.client.leave(room).then(
        () => {
          c.events.push(`${t()} app left ${room}`);
        },
        (e: ClientError) => {
          c.uncertain.add(room);
          c.events.push(`${t()} app leave failed ${room} ${e.code}`);
        },
      ).finally(done);
    } else {
      const from = Date.now();
      c.events.push(`${t()} app join ${room}`);
      if (cfg.racy) c.want.add(room);
      c.client.join(room).then(
        ({ seq }) => {
          c.events.push(`${t()} app joined ${room} ${seq}`);
          if (lastOp.get(key) !== op) return;
          c.want.add(room);
          c.interest.set(room, { since: seq, from });
        },
        (e: ClientError) => {
          c.uncertain.add(room);
          c.events.push(`${t()} app join failed ${room} ${e.code}`);
        },
      ).finally(done);
      if (cfg.racy && opRand() < 0.5) publish(c, room);
    }
  };
  const clientLoops = cs.map(async (c) => {
    while (ops) {
      await sleep(50 + Math.floor(opRand() * 250));
      if (!ops) break;
      if (opRand() < cfg.churn) churnOp(c);
      else {
        const rooms = [...c.want].filter((room) => (cfg.racy || !c.busy.has(room)) && !c.uncertain.has(room) && (room !== 'm0' || membership.rooms.get('m0')!.has(c.user)));
        if (rooms.length) publish(c, rooms[Math.floor(opRand() * rooms.length)]!);
      }
    }
  });
  const memberLoop = (async () => {
    if (!cfg.members) return;
    while (chaos) {
      await sleep(300 + Math.floor(rand() * 700));
      if (!chaos) break;
      const user = USERS[Math.floor(rand() * USERS.length)]!;
      const members = membership.rooms.get('m0')!;
      const mgr = srvs[Math.floor(rand() * srvs.length)]!.manager;
      if (members.has(user)) {
        membership.remove('m0', user);
        for (const c of cs) if (c.user === user) {
          c.want.delete('m0');
          c.interest.delete('m0');
          c.events.push(`${t()} server removeMember m0`);
        }
        await mgr.removeMember('m0', user);
      } else {
        membership.add('m0', user);
        for (const c of cs) if (c.user === user) c.events.push(`${t()} server addMember m0`);
        await mgr.addMember('m0', user);
      }
    }
  })();
  const faultLoop = (async () => {
    while (chaos) {
      await sleep(cfg.faultEveryMs[0] + Math.floor(rand() * (cfg.faultEveryMs[1] - cfg.faultEveryMs[0])));
      if (!chaos) break;
      proxy.fault();
    }
  })();

  await sleep(cfg.durationMs);
  chaos = false;
  ops = false;
  await faultLoop;
  await memberLoop;
  await Promise.all(clientLoops);
  const faultsEndedAt = Date.now();
  proxy.calm();

  // Settle: every publish settles, every client is open, bounded.
  const settleBound = 30_000;
  while (Date.now() - faultsEndedAt < settleBound && (pubs.some((p) => p.settledAt === undefined) || cs.some((c) => c.client.state !== 'open' || c.pendingOps > 0))) await sleep(20);
  const hanging = pubs.filter((p) => p.settledAt === undefined);
  for (const p of hanging) violate(`publish hangs ${settleBound} ms after faults stopped: client ${p.client} room ${p.room} cid ${p.cid} called at ${p.calledAt - start}`);
  for (const c of cs) if (c.client.state !== 'open') violate(`client ${c.index} (${c.user}) not open ${settleBound} ms after faults: ${c.client.state}`);
  for (const c of cs) if (c.pendingOps > 0) violate(`client ${c.index} join/leave still pending: ${[...c.busy].join(',')}`);

  // Flush: each client publishes a marker into each room it wants; wait until delivered everywhere.
  const markers: Pub[] = [];
  for (const c of cs) {
    for (const room of c.want) {
      if (c.uncertain.has(room)) continue;
      const before = pubs.length;
      publish(c, room);
      markers.push(pubs[before]!);
    }
  }
  const flushStart = Date.now();
  while (Date.now() - flushStart < 15_000 && markers.some((p) => p.settledAt === undefined)) await sleep(20);
  await sleep(1500);

  // ---- checks
  const byId = new Map<string, Pub>();
  const byCid = new Map<string, Pub>();
  for (const p of pubs) {
    byCid.set(p.cid, p);
    if (p.ack) {
      const prior = byId.get(p.ack.id);
      if (prior) violate(`two publishes acked with one id ${p.ack.id}: ${prior.cid} and ${p.cid}`);
      byId.set(p.ack.id, p);
    }
  }
  // Seq uniqueness per room among acks.
  const seqOwner = new Map<string, string>();
  for (const p of pubs) {
    if (!p.ack) continue;
    const k = `${p.room}#${p.ack.seq}`;
    const prior = seqOwner.get(k);
    if (prior && prior !== p.ack.id) violate(`two ids with one seq ${k}: ${prior} ${p.ack.id}`);
    seqOwner.set(k, p.ack.id);
  }
  for (const m of markers) if (!m.ack) violate(`marker publish not acked: client ${m.client} room ${m.room}: ${m.error ?? 'pending'}`);

  const missingReport: string[] = [];
  for (const c of cs) {
    const seen = new Set<string>();
    const lastSeq = new Map<string, number>();
    const cidToId = new Map<string, string>();
    for (const m of c.messages) {
      if (seen.has(m.id)) violate(`client ${c.index} saw id ${m.id} twice (room ${m.room} seq ${m.seq})`);
      seen.add(m.id);
      const prev = lastSeq.get(m.room) ?? 0;
      if (m.seq <= prev) violate(`client ${c.index} room ${m.room}: seq ${m.seq} after ${prev}`);
      lastSeq.set(m.room, Math.max(prev, m.seq));
      const data = m.data as { cid: string; from: number };
      const prior = cidToId.get(data.cid);
      if (prior && prior !== m.id) violate(`client ${c.index}: cid ${data.cid} delivered under two ids ${prior} ${m.id}`);
      cidToId.set(data.cid, m.id);
      const pub = byCid.get(data.cid);
      if (pub?.ack && pub.ack.id !== m.id) violate(`client ${c.index}: cid ${data.cid} acked as ${pub.ack.id}/${pub.ack.seq} but delivered as ${m.id}/${m.seq}`);
      if (pub?.ack && pub.ack.seq !== m.seq) violate(`client ${c.index}: cid ${data.cid} acked seq ${pub.ack.seq} delivered seq ${m.seq}`);
      if (data.from === c.index && pub?.ack) violate(`client ${c.index} received its own acked publish ${data.cid} as a message (room ${m.room} seq ${m.seq})`);
    }
    // Completeness.
    for (const [room, interest] of c.interest) {
      if (c.uncertain.has(room)) continue;
      for (const p of pubs) {
        if (!p.ack || p.room !== room || p.client === c.index || p.ack.seq <= interest.since) continue;
        if (seen.has(p.ack.id)) continue;
        const gap = c.gaps.find((g) => g.room === room && g.t >= p.calledAt - 1000);
        if (gap) continue;
        missingReport.push(`client ${c.index} (${c.user}) missed ${room} seq ${p.ack.seq} (${p.cid}) since=${interest.since}`);
      }
    }
  }
  // Rejected publishes that others received anyway (not those of a room whose join/leave timed out).
  const c0 = (p: Pub): boolean => cs[p.client]!.uncertain.has(p.room);
  for (const p of pubs) {
    if (p.ack || !p.error || p.error.startsWith('timeout') || c0(p)) continue;
    const got = cs.filter((c) => c.messages.some((m) => (m.data as { cid: string }).cid === p.cid)).map((c) => c.index);
    if (got.length) violate(`publish ${p.cid} into ${p.room} rejected (${p.error}) but delivered to clients ${got.join(',')}`);
  }
  for (const line of missingReport.slice(0, 40)) violate(line);
  if (missingReport.length > 40) violate(`... ${missingReport.length - 40} more missing`);

  // Final membership: client view and server view.
  for (const c of cs) {
    const wantM0 = cfg.members ? membership.rooms.get('m0')!.has(c.user) : c.want.has('m0');
    const expected = [...c.want, ...(wantM0 ? ['m0'] : [])].filter((r) => !c.uncertain.has(r) && (r !== 'm0' || wantM0)).filter((r, i, a) => a.indexOf(r) === i).sort();
    const got = [...c.client.rooms].filter((r) => !c.uncertain.has(r)).sort();
    if (expected.join() !== got.join()) violate(`client ${c.index} (${c.user}) rooms ${got.join(',')} expected ${expected.join(',')}`);
    const id = c.client.connectionId;
    if (id) {
      const onServer = srvs.map((s) => s.manager.roomsOf(id)).find((r) => r.length > 0) ?? [];
      const server = onServer.filter((r) => !c.uncertain.has(r)).sort();
      if (server.join() !== expected.join()) violate(`client ${c.index} (${c.user}) server view ${server.join(',')} expected ${expected.join(',')}`);
    }
  }
  const sendErrors = serverErrors.filter((e) => e.includes('"phase":"send"')).length;
  for (const e of serverErrors) if (!e.includes('"phase":"send"')) violate(e);

  const errorCodes: Record<string, number> = {};
  for (const p of pubs) if (p.error) errorCodes[p.error.split(':')[0]!] = (errorCodes[p.error.split(':')[0]!] ?? 0) + 1;
  const clientErrors: Record<string, number> = {};
  for (const c of cs) for (const e of c.errors) clientErrors[e.code] = (clientErrors[e.code] ?? 0) + 1;
  const stats = {
    seed: cfg.seed,
    servers: cfg.servers,
    publishes: pubs.length,
    acked: pubs.filter((p) => p.ack).length,
    publishErrors: errorCodes,
    clientErrors,
    gaps: cs.reduce((a, c) => a + c.gaps.length, 0),
    welcomes: cs.reduce((a, c) => a + c.welcomes, 0),
    messages: cs.reduce((a, c) => a + c.messages.length, 0),
    faults: proxy.counts,
    serverSendErrors: sendErrors,
    retried: pubs.filter((p) => p.retries).length,
    uncertain: cs.reduce((a, c) => a + c.uncertain.size, 0),
  };
  log(`chaos ${JSON.stringify(stats)}`);
  if (violations.length) {
    const involved = new Set<number>();
    for (const v of violations) {
      const m = /client (\d+)/.exec(v);
      if (m) involved.add(Number(m[1]));
    }
    for (const i of [...involved].slice(0, 3)) log(`client ${i} events:\n  ${cs[i]!.events.slice(-80).join('\n  ')}`);
  }

  const { writeFileSync, mkdirSync } = await import('node:fs');
  mkdirSync('/tmp/chaos-logs/events', { recursive: true });
  for (const c of cs) writeFileSync(`/tmp/chaos-logs/events/${cfg.servers}-${cfg.seed}-c${c.index}.txt`, c.events.join('\n') + '\n');
  writeFileSync(`/tmp/chaos-logs/events/${cfg.servers}-${cfg.seed}-faults.txt`, proxy.faults.map((f) => `${f.at - start} ${f.kind} ${f.pair ?? ''} ${f.ms ?? ''}`).join('\n') + '\n');
  for (const c of cs) c.client.close();
  await proxy.close();
  for (const s of srvs) await s.close();
  for (const r of redisConns) r.disconnect();
  if (cfg.servers > 1) {
    const admin = new Redis({ host: '127.0.0.1', port: cfg.redisPort ?? 6379 });
    let cursor = '0';
    do {
      const [next, keys] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      if (keys.length) await admin.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    admin.disconnect();
  }
  return { violations, stats };
}
