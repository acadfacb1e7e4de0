import fc from 'fast-check';
import { describe, it } from 'vitest';
import {
  LocalBus,
  RoomManager,
  RoomwireError,
  type Connection,
  type ConnectionHandlers,
  type MembershipLoader,
  type RoomManagerOptions,
} from '../../src/index.js';
import { assertModel, modelSettings } from '../helpers/model.js';
import { MembershipTable } from '../helpers/server.js';

/**
 * A model-based property test of the core: one RoomManager, or two or three on one
 * LocalBus, driven through random sequences of connections opening and closing, client
 * frames (join, leave, publish with and without cid, resume, ping, malformed ones),
 * server calls (addMember, removeMember, invalidate, broadcast, join, leave, close),
 * slow consumers and sends that throw. Every frame a connection receives is checked as
 * it arrives, and the run as a whole once it settled.
 *
 * Replay a failure with MODEL_SEED=<seed> MODEL_PATH=<path> (both printed by fast-check);
 * MODEL_RUNS and MODEL_LEN (steps per run, 45) widen a hunt.
 */

const SETTINGS = modelSettings('MODEL', { seed: 0x5eed_0001, runs: 150, len: 45 });

const USERS = ['ann', 'ben', 'cat', 'mal'] as const;
const ROOMS = ['r1', 'r2', 'r3', 'pub'] as const;
const INITIAL: Record<string, string[]> = { r1: ['ann', 'ben'], r2: ['ben', 'cat'], r3: ['ann', 'cat'], pub: [] };
const MAX_BUFFERED = 10_000;

type Frame = { type: string; [key: string]: unknown };

/** An in-memory socket that records every frame and hands each to the model as it is sent. */
class ModelConn implements Connection {
  bufferedAmount = 0;
  closedWith: { code: number; reason: string } | undefined;
  failNext = 0;
  handlers!: ConnectionHandlers;
  readonly frames: Frame[] = [];
  constructor(private readonly observe: (frame: Frame) => void) {}
  send(text: string): boolean {
    if (this.closedWith) return false;
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('send failed');
    }
    const frame = JSON.parse(text) as Frame;
    this.frames.push(frame);
    this.observe(frame);
    return true;
  }
  close(code: number, reason: string): void {
    if (this.closedWith) return;
    this.closedWith = { code, reason };
    queueMicrotask(() => this.handlers.closed(code, reason));
  }
}

type Op =
  | { k: 'open'; user: number; node: number; expiring: boolean }
  | { k: 'close'; conn: number }
  | { k: 'join'; conn: number; room: number }
  | { k: 'leave'; conn: number; room: number }
  | { k: 'publish'; conn: number; room: number; cid: string | undefined; refuse: boolean; big: boolean }
  | { k: 'resume'; conn: number; rooms: [number, number][] }
  | { k: 'ping'; conn: number }
  | { k: 'bad'; conn: number; which: number }
  | { k: 'add'; room: number; user: number; node: number }
  | { k: 'remove'; room: number; user: number; node: number }
  | { k: 'invalidate'; room: number; node: number; silentAdd: number | undefined }
  | { k: 'broadcast'; room: number; node: number; except: number | undefined }
  | { k: 'sjoin'; conn: number; room: number }
  | { k: 'sleave'; conn: number; room: number }
  | { k: 'slow'; conn: number }
  | { k: 'fail'; conn: number; n: number }
  | { k: 'tick'; ms: number }
  | { k: 'shutdown'; node: number };
type Step = { op: Op; wait: boolean };

interface Config {
  nodes: number;
  bus: boolean;
  presence: boolean;
  hook: boolean;
  limited: boolean;
  roomLimit: number;
  /** sync: the table answers at once; async: a tick later; flaky: a tick later, and some calls fail. */
  loader: 'sync' | 'async' | 'flaky';
  ttlMs: number;
}

const idx = fc.nat({ max: 15 });
const rarely = fc.nat({ max: 9 }).map((n) => n === 0);
const room = fc.nat({ max: ROOMS.length - 1 });
const user = fc.nat({ max: USERS.length - 1 });
const node = fc.nat({ max: 2 });
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ k: fc.constant('open' as const), user, node, expiring: rarely }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('close' as const), conn: idx }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('join' as const), conn: idx, room }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('leave' as const), conn: idx, room }) },
  {
    weight: 8,
    arbitrary: fc.record({ k: fc.constant('publish' as const), conn: idx, room, cid: fc.option(fc.constantFrom('c1', 'c2', 'c3'), { nil: undefined }), refuse: fc.boolean(), big: rarely }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('resume' as const), conn: idx, rooms: fc.array(fc.tuple(room, fc.nat({ max: 8 })), { minLength: 1, maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('ping' as const), conn: idx }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('bad' as const), conn: idx, which: fc.nat({ max: 9 }) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('add' as const), room, user, node }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('remove' as const), room, user, node }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('invalidate' as const), room, node, silentAdd: fc.option(user, { nil: undefined }) }) },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('broadcast' as const), room, node, except: fc.option(idx, { nil: undefined, freq: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('sjoin' as const), conn: idx, room }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('sleave' as const), conn: idx, room }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('slow' as const), conn: idx }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('fail' as const), conn: idx, n: fc.integer({ min: 1, max: 2 }) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('tick' as const), ms: fc.constantFrom(0, 0, 1, 3) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('shutdown' as const), node }) },
);
const step: fc.Arbitrary<Step> = fc.record({ op, wait: fc.boolean() });
const config: fc.Arbitrary<Config> = fc.record({
  nodes: fc.integer({ min: 1, max: 3 }),
  bus: fc.boolean(),
  presence: fc.boolean(),
  hook: fc.boolean(),
  limited: fc.boolean(),
  roomLimit: fc.constantFrom(1000, 1000, 2),
  loader: fc.constantFrom('sync' as const, 'async' as const, 'flaky' as const),
  ttlMs: fc.constantFrom(30_000, 2),
});

const BAD_FRAMES = [
  'nope',
  '{',
  '[]',
  '{"type":"publish"}',
  '{"type":"join","room":"","ref":"REF"}',
  '{"type":"wat","ref":"REF"}',
  '{"type":"publish","room":"r1","data":1,"ref":5}',
  '{"type":"resume","rooms":{"r1":-1},"ref":"REF"}',
  '{"type":"publish","room":"r1","cid":7,"data":1,"ref":"REF"}',
  'BINARY',
];

/** A connection's time in a room, from its welcome or joined to its left. */
interface Stay {
  /** The seq it entered at (welcome.seqs or joined.seq). */
  start: number;
  /** Seqs it was sent live, and those of its own publishes' acks. */
  seqs: Set<number>;
  /** The last live message's seq. */
  lastMessage: number;
  admitted: boolean;
}

interface ConnModel {
  readonly n: number;
  readonly user: string;
  readonly node: number;
  readonly socket: ModelConn;
  welcomed: boolean;
  /** We closed it (the peer went away). */
  gone: boolean;
  /** A send to it threw, or it was made slow: frames may be missing, by design. */
  dirty: boolean;
  readonly stays: Map<string, Stay>;
  /** Rooms it left (client leave or server leave), as the manager's `left` set. */
  readonly left: Set<string>;
  /** Every message seq received live per room, and acks of its own publishes. */
  readonly live: Map<string, Set<number>>;
  readonly liveIds: Set<string>;
  /** Replayed messages per resume ref and room. */
  readonly replays: Map<string, Map<string, { seq: number; id: string }[]>>;
  /** Joins this connection asked for whose user was not a participant: an entry is admitted. */
  readonly asked: Map<string, string>;
  /** Seqs of broadcasts that left it out (`except`), per room: it knows them, as a publisher knows its own. */
  readonly excepted: Map<string, Set<number>>;
}

interface Pending {
  readonly conn: ConnModel;
  readonly kind: string;
  readonly room?: string;
  readonly cidKey?: string;
  readonly resume?: Map<string, number>;
  answers: number;
}

async function runModel(cfg: Config, steps: Step[]): Promise<string[]> {
  const violations: string[] = [];
  const fail = (what: string): void => {
    if (violations.length < 20) violations.push(what);
  };
  const table = new MembershipTable(INITIAL);
  table.canJoinRooms.add('pub');
  let calls = 0;
  const later = <T>(answer: () => T): T | Promise<T> => {
    if (cfg.loader === 'sync') return answer();
    const value = answer();
    const failing = cfg.loader === 'flaky' && ++calls % 4 === 0;
    return new Promise<T>((resolve, reject) => setTimeout(() => (failing ? reject(new Error('loader down')) : resolve(value)), 0));
  };
  const membership: MembershipLoader = {
    roomsOf: (u) => later(() => table.roomsOf(u)),
    membersOf: (r) => later(() => table.membersOf(r)),
    canJoin: (u, r) => later(() => table.canJoin(u, r)),
  };
  /** Per room and user: the room's latest seq when the user's removal took effect. */
  const removedAt = new Map<string, number>();
  const removing = new Set<string>();
  const bus = cfg.bus ? new LocalBus() : undefined;
  const nodes = bus ? cfg.nodes : 1;
  const managers: RoomManager[] = [];
  const shut = new Set<number>();
  /** Stored messages per node: room → seqs in the order the node emitted `message`. */
  const emitted: Map<string, number[]>[] = [];
  const storedByCid = new Map<string, Set<string>>();
  for (let i = 0; i < nodes; i++) {
    const options: RoomManagerOptions = {
      authenticate: () => ({ id: 'unused' }),
      membership,
      membershipTtlMs: cfg.ttlMs,
      presence: cfg.presence,
      maxBufferedBytes: MAX_BUFFERED,
      maxRoomsPerConnection: cfg.roomLimit,
      closeTimeoutMs: 200,
      ...(bus ? { backplane: bus.node() } : { history: 1000 }),
      ...(cfg.limited
        ? { publishRate: { burst: 4, perSecond: 2 }, joinRate: { burst: 4, perSecond: 2 }, rateLimitStrikes: { burst: 3, perSecond: 1 } }
        : { publishRate: false, joinRate: false }),
      ...(cfg.hook
        ? {
            onPublish: async ({ data }) => {
              await new Promise((resolve) => setTimeout(resolve, (data as { n: number }).n % 3));
              if ((data as { refuse?: boolean }).refuse) throw new RoomwireError('bad_request', 'refused by the hook');
              return { ...(data as object), hooked: true };
            },
          }
        : {}),
    };
    const manager = new RoomManager(options);
    const seen = new Map<string, number[]>();
    emitted.push(seen);
    manager.on('message', (message) => {
      const list = seen.get(message.room) ?? [];
      list.push(message.seq);
      seen.set(message.room, list);
      const data = message.data as { cid?: string | null; key?: string } | null;
      if (data && typeof data === 'object' && typeof data.key === 'string') {
        const ids = storedByCid.get(data.key) ?? new Set<string>();
        ids.add(message.id);
        storedByCid.set(data.key, ids);
      }
    });
    manager.on('error', (error, context) => {
      if (context.phase === 'send') return;
      if (cfg.loader === 'flaky' && ['roomsOf', 'membersOf', 'canJoin'].includes(context.phase)) return;
      // Documented: after close() a broadcast is refused by the closed backplane.
      if (shut.has(i) && context.phase.startsWith('backplane.')) return;
      fail(`node ${i}: error event ${context.phase}: ${error.message}`);
    });
    managers.push(manager);
  }

  const latest = (roomName: string): number => {
    if (bus) return bus.history.latestSeq(roomName) as number;
    return (managers[0] as unknown as { history: { latestSeq(r: string): number } }).history.latestSeq(roomName);
  };
  const isParticipant = (roomName: string, userId: string): boolean => table.rooms.get(roomName)?.has(userId) ?? false;
  /** A user may read a room now: a participant, or a removal still on its way, or its messages predate the removal. */
  const mayRead = (roomName: string, userId: string, seq: number): boolean => {
    if (isParticipant(roomName, userId) || removing.has(`${roomName}|${userId}`)) return true;
    const at = removedAt.get(`${roomName}|${userId}`);
    return at !== undefined && seq <= at;
  };

  const conns: ConnModel[] = [];
  const pending = new Map<string, Pending>();
  const inflight = new Set<Promise<unknown>>();
  let refs = 0;
  let counter = 0;

  const closeStay = (conn: ConnModel, roomName: string, stay: Stay, why: string): void => {
    if (conn.dirty) return;
    // A broadcast that left it out is no hole, also when its report came before the stay began
    // (a joined after the broadcast resolved on another process, before its copy arrived here).
    const top = Math.max(0, ...stay.seqs);
    const excepted = [...(conn.excepted.get(roomName) ?? [])].filter((s) => s < top && !stay.seqs.has(s));
    const seqs = [...stay.seqs, ...excepted].filter((s) => s > stay.start).sort((a, b) => a - b);
    for (let i = 0; i < seqs.length; i++) {
      if (seqs[i] !== stay.start + i + 1) {
        fail(`conn ${conn.n} (${conn.user}) room ${roomName}: stay from ${stay.start} has a hole (${why}): ${seqs.join(',')}`);
        return;
      }
    }
  };

  const observer = (connRef: () => ConnModel) => (frame: Frame): void => {
    const conn = connRef();
    const roomName = typeof frame.room === 'string' ? frame.room : '';
    const ref = typeof frame.ref === 'string' ? frame.ref : undefined;
    const request = ref === undefined ? undefined : pending.get(ref);
    switch (frame.type) {
      case 'welcome': {
        if (conn.welcomed) fail(`conn ${conn.n}: second welcome`);
        if (conn.socket.frames.length !== 1) fail(`conn ${conn.n}: welcome is not the first frame`);
        conn.welcomed = true;
        const seqs = frame.seqs as Record<string, number>;
        for (const r of frame.rooms as string[]) {
          if (!isParticipant(r, conn.user) && !removing.has(`${r}|${conn.user}`)) fail(`conn ${conn.n} (${conn.user}): auto-joined to ${r}, not a participant`);
          conn.stays.set(r, { start: seqs[r] ?? 0, seqs: new Set(), lastMessage: seqs[r] ?? 0, admitted: false });
        }
        break;
      }
      case 'joined': {
        const stay = conn.stays.get(roomName);
        if (stay) {
          if (ref === undefined && !conn.dirty) fail(`conn ${conn.n}: server joined ${roomName} while already in it`);
          break;
        }
        const admitted = ref !== undefined && request?.kind === 'join' && !isParticipant(roomName, conn.user);
        if (!admitted && !isParticipant(roomName, conn.user) && !conn.asked.has(roomName) && !removing.has(`${roomName}|${conn.user}`)) {
          fail(`conn ${conn.n} (${conn.user}): joined ${roomName} without being a participant`);
        }
        conn.stays.set(roomName, { start: frame.seq as number, seqs: new Set(), lastMessage: frame.seq as number, admitted: admitted || conn.asked.has(roomName) });
        if (ref !== undefined) conn.left.delete(roomName);
        break;
      }
      case 'left': {
        const stay = conn.stays.get(roomName);
        if (stay) closeStay(conn, roomName, stay, 'left');
        conn.stays.delete(roomName);
        break;
      }
      case 'ack': {
        const seq = frame.seq as number;
        sameMessage(conn, frame.id as string, roomName, seq);
        conn.stays.get(roomName)?.seqs.add(seq);
        let live = conn.live.get(roomName);
        if (!live) conn.live.set(roomName, (live = new Set()));
        live.add(seq);
        break;
      }
      case 'message': {
        const seq = frame.seq as number;
        const id = frame.id as string;
        sameMessage(conn, id, roomName, seq);
        const data = frame.data as { n?: number; hooked?: boolean } | null;
        const n = data?.n;
        if (typeof n !== 'number' || !senders.has(n)) fail(`conn ${conn.n}: message ${roomName} seq ${seq} carries data nobody sent`);
        else {
          const sender = senders.get(n)!;
          if (frame.from !== sender) fail(`conn ${conn.n}: message from ${String(frame.from)}, sent by ${String(sender)}`);
          if (cfg.hook && sender !== null && data?.hooked !== true) fail(`conn ${conn.n}: message ${roomName} seq ${seq} did not go through the hook`);
        }
        if (request?.kind === 'resume') {
          const afterSeq = request.resume?.get(roomName);
          if (afterSeq === undefined) fail(`conn ${conn.n}: replay of ${roomName} it did not ask for`);
          else if (seq <= afterSeq) fail(`conn ${conn.n}: replay of ${roomName} seq ${seq} not after ${afterSeq}`);
          if (conn.liveIds.has(id)) fail(`conn ${conn.n}: replayed ${roomName} seq ${seq} it was sent live`);
          // A connection whose sends threw may have lost the joined of a room it was admitted to
          // (it asked for it): the server has it in the room, the model has no stay for it.
          const lostJoined = conn.dirty && conn.asked.has(roomName);
          if (!conn.stays.has(roomName) && !lostJoined && !mayRead(roomName, conn.user, Number.POSITIVE_INFINITY)) fail(`conn ${conn.n} (${conn.user}): replay of ${roomName}, may not read it`);
          const byRoom = conn.replays.get(ref!) ?? new Map<string, { seq: number; id: string }[]>();
          conn.replays.set(ref!, byRoom);
          const list = byRoom.get(roomName) ?? [];
          if (list.length > 0 && list.at(-1)!.seq >= seq) fail(`conn ${conn.n}: replay of ${roomName} out of order`);
          list.push({ seq, id });
          byRoom.set(roomName, list);
          break;
        }
        if (ref !== undefined) fail(`conn ${conn.n}: a message with ref ${ref} that is no resume`);
        if (conn.liveIds.has(id)) fail(`conn ${conn.n}: message ${roomName} seq ${seq} sent twice`);
        conn.liveIds.add(id);
        let live = conn.live.get(roomName);
        if (!live) conn.live.set(roomName, (live = new Set()));
        live.add(seq);
        const stay = conn.stays.get(roomName);
        if (!stay) {
          // The fallback reaches a participant connection outside the room only when it is at its room limit.
          // A connection whose sends threw may have lost its joined: only what it may read is checked.
          if (!conn.dirty && (conn.stays.size < cfg.roomLimit || conn.left.has(roomName))) fail(`conn ${conn.n} (${conn.user}): live message of ${roomName} seq ${seq} outside the room`);
          if (!mayRead(roomName, conn.user, seq) && !conn.asked.has(roomName)) fail(`conn ${conn.n} (${conn.user}): message of ${roomName} seq ${seq} after removal`);
          break;
        }
        if (!stay.admitted && !mayRead(roomName, conn.user, seq)) fail(`conn ${conn.n} (${conn.user}): message of ${roomName} seq ${seq} after removal`);
        if (seq <= stay.lastMessage) fail(`conn ${conn.n}: ${roomName} seq ${seq} after ${stay.lastMessage} (not increasing)`);
        stay.lastMessage = seq;
        stay.seqs.add(seq);
        break;
      }
      case 'presence': {
        if (!conn.stays.has(roomName) && !conn.dirty) fail(`conn ${conn.n} (${conn.user}): presence of ${roomName} outside the room`);
        if (frame.user === conn.user) fail(`conn ${conn.n}: its own presence`);
        break;
      }
      case 'resumed': {
        if (!request || request.kind !== 'resume') break;
        for (const r of Object.keys(frame.rooms as object)) {
          const afterSeq = request.resume!.get(r);
          if (afterSeq === undefined) {
            fail(`conn ${conn.n}: resumed lists ${r}, not asked`);
            continue;
          }
          const replayed = conn.replays.get(ref!)?.get(r) ?? [];
          if (!conn.dirty && (frame.rooms as Record<string, { replayed: number }>)[r]!.replayed !== replayed.length) fail(`conn ${conn.n}: resumed count of ${r} is wrong`);
          if (conn.dirty) continue;
          const union = new Set([...(conn.live.get(r) ?? []), ...replayed.map((m) => m.seq)]);
          const max = Math.max(0, ...union);
          for (let s = afterSeq + 1; s <= max; s++) {
            if (!union.has(s)) {
              fail(`conn ${conn.n} (${conn.user}): resume of ${r} from ${afterSeq} left out seq ${s} (has ${[...union].sort((a, b) => a - b).join(',')})`);
              break;
            }
          }
        }
        break;
      }
      case 'error':
        if (frame.code === 'internal') fail(`conn ${conn.n}: internal error ${String(frame.message)}`);
        break;
    }
    if (request) {
      const terminal =
        (request.kind === 'publish' && (frame.type === 'ack' || frame.type === 'error')) ||
        (request.kind === 'join' && (frame.type === 'joined' || frame.type === 'error')) ||
        (request.kind === 'leave' && (frame.type === 'left' || frame.type === 'error')) ||
        (request.kind === 'ping' && (frame.type === 'pong' || frame.type === 'error')) ||
        (request.kind === 'bad' && frame.type === 'error') ||
        (request.kind === 'resume' && (frame.type === 'resumed' || (frame.type === 'error' && frame.room === undefined)));
      if (terminal) {
        request.answers++;
        if (request.answers > 1) fail(`conn ${conn.n}: ref ${ref} (${request.kind}) answered ${request.answers} times`);
        if (request.kind === 'publish' && request.cidKey !== undefined) {
          if (frame.type === 'ack') {
            const acks = cidAcks.get(request.cidKey) ?? new Set<string>();
            acks.add(frame.id as string);
            cidAcks.set(request.cidKey, acks);
          } else cidErrors.add(request.cidKey);
        }
      }
    }
  };
  const cidAcks = new Map<string, Set<string>>();
  /** Every message id seen, with its room and seq: an id names one message everywhere. */
  const ids = new Map<string, string>();
  /** Each published or broadcast data's `n` → who sent it (null: the server). */
  const senders = new Map<number, string | null>();
  const sameMessage = (conn: ConnModel, id: string, roomName: string, seq: number): void => {
    const where = `${roomName}#${seq}`;
    const known = ids.get(id);
    if (known === undefined) ids.set(id, where);
    else if (known !== where) fail(`conn ${conn.n}: id ${id} is ${where} here, ${known} before`);
  };
  const cidErrors = new Set<string>();

  const track = (promise: Promise<unknown>, what: string, allowReject = false): Promise<unknown> => {
    const guarded = promise.then(
      () => undefined,
      (error: unknown) => {
        if (!allowReject) fail(`${what} rejected: ${String(error)}`);
      },
    );
    inflight.add(guarded);
    void guarded.then(() => inflight.delete(guarded));
    return guarded;
  };
  const connAt = (i: number): ConnModel | undefined => (conns.length === 0 ? undefined : conns[i % conns.length]);
  const send = (conn: ConnModel, kind: string, frame: Record<string, unknown>, extra: Partial<Pending> = {}): void => {
    const ref = `f${++refs}`;
    pending.set(ref, { conn, kind, answers: 0, ...extra });
    conn.socket.handlers.message(JSON.stringify({ ...frame, ref }), false);
  };
  const managerOf = (n: number): RoomManager => managers[n % managers.length]!;
  const nodeOf = (n: number): number => n % managers.length;

  for (const { op, wait } of steps) {
    try {
      switch (op.k) {
        case 'open': {
          const n = nodeOf(op.node);
          if (shut.has(n)) break;
          const userId = USERS[op.user]!;
          let model!: ConnModel;
          const socket = new ModelConn(observer(() => model));
          model = {
            n: conns.length,
            user: userId,
            node: n,
            socket,
            welcomed: false,
            gone: false,
            dirty: false,
            stays: new Map(),
            left: new Set(),
            live: new Map(),
            liveIds: new Set(),
            replays: new Map(),
            asked: new Map(),
            excepted: new Map(),
          };
          conns.push(model);
          // An expiring one is closed with 1008 a moment after its welcome.
          socket.handlers = managers[n]!.open(socket, op.expiring ? { id: userId, expiresAt: Date.now() + 3 } : { id: userId });
          const ready = track(socket.handlers.ready, 'ready');
          if (wait) await ready;
          break;
        }
        case 'close': {
          const conn = connAt(op.conn);
          if (!conn || conn.gone) break;
          conn.gone = true;
          conn.socket.closedWith ??= { code: 1000, reason: 'bye' };
          conn.socket.handlers.closed(1000, 'bye');
          break;
        }
        case 'join': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const r = ROOMS[op.room]!;
          if (!isParticipant(r, conn.user) && r === 'pub') conn.asked.set(r, 'join');
          send(conn, 'join', { type: 'join', room: r }, { room: r });
          break;
        }
        case 'leave': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const r = ROOMS[op.room]!;
          if (!conn.gone && !conn.socket.closedWith && !shut.has(conn.node)) conn.left.add(r);
          send(conn, 'leave', { type: 'leave', room: r }, { room: r });
          break;
        }
        case 'publish': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const r = ROOMS[op.room]!;
          const cidKey = op.cid === undefined ? undefined : `${conn.user}|${r}|${op.cid}`;
          // A big one is over maxMessageBytes: too_large.
          const data = { key: cidKey ?? null, n: ++counter, refuse: cfg.hook && op.refuse, ...(op.big ? { pad: 'x'.repeat(70_000) } : {}) };
          senders.set(data.n, conn.user);
          send(conn, 'publish', { type: 'publish', room: r, data, ...(op.cid === undefined ? {} : { cid: op.cid }) }, { room: r, ...(cidKey === undefined ? {} : { cidKey }) });
          break;
        }
        case 'resume': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const rooms: Record<string, number> = {};
          for (const [r, s] of op.rooms) rooms[ROOMS[r]!] = s;
          send(conn, 'resume', { type: 'resume', rooms }, { resume: new Map(Object.entries(rooms)) });
          break;
        }
        case 'ping': {
          const conn = connAt(op.conn);
          if (conn) send(conn, 'ping', { type: 'ping' });
          break;
        }
        case 'bad': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const text = BAD_FRAMES[op.which]!;
          if (text === 'BINARY') conn.socket.handlers.message(new Uint8Array([1, 2, 3]), true);
          else if (text.includes('REF')) {
            const ref = `f${++refs}`;
            pending.set(ref, { conn, kind: 'bad', answers: 0 });
            conn.socket.handlers.message(text.replace('REF', ref), false);
          } else conn.socket.handlers.message(text, false);
          break;
        }
        case 'add': {
          const n = nodeOf(op.node);
          const r = ROOMS[op.room]!;
          const u = USERS[op.user]!;
          table.add(r, u);
          removedAt.delete(`${r}|${u}`);
          const p = track(managers[n]!.addMember(r, u), 'addMember', shut.has(n));
          if (wait) await p;
          break;
        }
        case 'remove': {
          const n = nodeOf(op.node);
          const r = ROOMS[op.room]!;
          const u = USERS[op.user]!;
          if (!isParticipant(r, u)) break;
          table.remove(r, u);
          const key = `${r}|${u}`;
          removing.add(key);
          const p = track(
            managers[n]!.removeMember(r, u).then(() => {
              if (isParticipant(r, u)) return;
              removing.delete(key);
              removedAt.set(key, latest(r));
            }),
            'removeMember',
          );
          if (!bus) {
            // Without a backplane the removal is complete when the call returns.
            removing.delete(key);
            removedAt.set(key, latest(r));
          }
          if (wait) await p;
          break;
        }
        case 'invalidate': {
          const n = nodeOf(op.node);
          const r = ROOMS[op.room]!;
          if (op.silentAdd !== undefined) table.add(r, USERS[op.silentAdd]!);
          const p = track(managers[n]!.invalidate(r), 'invalidate');
          if (wait) await p;
          break;
        }
        case 'broadcast': {
          const n = nodeOf(op.node);
          const r = ROOMS[op.room]!;
          const quiet = wait && inflight.size === 0 && !shut.has(n);
          // Connections with no frame waiting for an answer, and whether they should get the message.
          const waiting = new Set([...pending.values()].filter((p) => p.answers === 0).map((p) => p.conn));
          const before = quiet
            ? conns
                .filter((c) => c.welcomed && !c.gone && !c.socket.closedWith && !c.dirty && !shut.has(c.node) && !waiting.has(c))
                .map((c) => ({ c, should: (isParticipant(r, c.user) && !c.left.has(r)) || c.stays.has(r) }))
            : [];
          senders.set(++counter, null);
          const excepted = op.except === undefined ? undefined : connAt(op.except);
          // With a backplane the id travels with the message: left out on whichever process.
          const except = excepted;
          const p = managerOf(n).broadcast(r, { key: null, n: counter }, excepted ? { except: excepted.socket.handlers.id } : {});
          let id: string | undefined;
          let stale = false;
          const q = track(
            p.then((report) => {
              id = report.id;
              stale = report.stale;
              // The excepted connection caused it: like a publisher, it knows the seq.
              if (except) {
                except.stays.get(r)?.seqs.add(report.seq);
                except.live.get(r)?.add(report.seq);
                const excepted = except.excepted.get(r) ?? new Set<number>();
                excepted.add(report.seq);
                except.excepted.set(r, excepted);
              }
            }),
            'broadcast',
            // Documented: once close() has closed the connections, broadcast() is refused.
            shut.has(n),
          );
          if (!wait) break;
          await q;
          // A loader call that failed (flaky) leaves the last known participants, or none, and
          // the report says so: which call fails depends on how many came before.
          if (!quiet || id === undefined || stale) break;
          // The other processes deliver their copies a moment later.
          for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 0));
          if (inflight.size > 0) break;
          for (const { c, should } of before) {
            if (c.dirty || c.socket.closedWith || c.gone) continue;
            if (c === except) {
              if (c.liveIds.has(id)) fail(`conn ${c.n}: got the broadcast it was excepted from`);
              continue;
            }
            const shouldHave = should && ((isParticipant(r, c.user) && !c.left.has(r)) || c.stays.has(r));
            if (shouldHave && !c.liveIds.has(id)) fail(`conn ${c.n} (${c.user}, node ${c.node}): missed broadcast ${id} of ${r}`);
            if (!should && c.liveIds.has(id) && !mayRead(r, c.user, Number.POSITIVE_INFINITY)) fail(`conn ${c.n} (${c.user}): got broadcast of ${r}`);
          }
          break;
        }
        case 'sjoin': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const r = ROOMS[op.room]!;
          const m = managers[conn.node]!;
          if (!conn.socket.closedWith && !conn.gone) {
            conn.left.delete(r);
            conn.asked.set(r, 'server');
          }
          const p = track(m.join(conn.socket.handlers.id, r), 'join');
          if (wait) await p;
          break;
        }
        case 'sleave': {
          const conn = connAt(op.conn);
          if (!conn) break;
          const r = ROOMS[op.room]!;
          if (managers[conn.node]!.leave(conn.socket.handlers.id, r)) conn.left.add(r);
          break;
        }
        case 'slow': {
          const conn = connAt(op.conn);
          if (!conn) break;
          conn.dirty = true;
          conn.socket.bufferedAmount = MAX_BUFFERED + 1;
          break;
        }
        case 'fail': {
          const conn = connAt(op.conn);
          if (!conn) break;
          conn.dirty = true;
          conn.socket.failNext += op.n;
          break;
        }
        case 'tick':
          await new Promise((resolve) => setTimeout(resolve, op.ms));
          break;
        case 'shutdown': {
          const n = nodeOf(op.node);
          if (shut.has(n)) break;
          shut.add(n);
          const p = track(managers[n]!.close(), 'close');
          if (wait) await p;
          break;
        }
      }
    } catch (error) {
      fail(`${op.k} threw: ${String(error)}`);
    }
    if (wait) await new Promise((resolve) => setTimeout(resolve, 0));
  }

  // Let everything finish.
  for (let i = 0; i < 20 && inflight.size > 0; i++) {
    await Promise.all([...inflight]);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  const answerable = (request: Pending): boolean => {
    const conn = request.conn;
    return !conn.gone && !conn.socket.closedWith && !conn.dirty && !shut.has(conn.node);
  };
  // Frames still being handled (a cid another process holds is polled for) finish first.
  const deadline = Date.now() + 3_000;
  do await new Promise((resolve) => setTimeout(resolve, 10));
  while (Date.now() < deadline && [...pending.values()].some((request) => answerable(request) && request.answers === 0));

  // Every frame with a ref on a connection still open got exactly one answer.
  for (const [ref, request] of pending) {
    const conn = request.conn;
    const open = answerable(request);
    if (open && request.answers !== 1) fail(`conn ${conn.n}: ref ${ref} (${request.kind} ${request.room ?? ''}) answered ${request.answers} times`);
  }
  // Each stay of a clean open connection saw every seq from its start.
  for (const conn of conns) {
    if (conn.gone || conn.socket.closedWith) continue;
    for (const [r, stay] of conn.stays) closeStay(conn, r, stay, 'end');
  }
  // A cid is stored once, and every ack of it names the same message.
  for (const [key, ids] of storedByCid) if (ids.size > 1) fail(`cid ${key} stored ${ids.size} times`);
  for (const [key, ids] of cidAcks) if (ids.size > 1 && !cidErrors.has(key)) fail(`cid ${key} acked with ${ids.size} ids`);
  // Per process and room, messages went out in seq order, each once.
  emitted.forEach((rooms, n) => {
    for (const [r, seqs] of rooms) {
      for (let i = 1; i < seqs.length; i++) if (seqs[i]! <= seqs[i - 1]!) fail(`node ${n}: room ${r} emitted seq ${seqs[i]} after ${seqs[i - 1]}`);
    }
  });

  // Everyone goes away: nothing stays behind.
  for (const conn of conns) {
    if (conn.gone) continue;
    conn.gone = true;
    conn.socket.closedWith ??= { code: 1000, reason: 'bye' };
    conn.socket.handlers.closed(1000, 'bye');
  }
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  await Promise.all([...inflight]);
  await new Promise((resolve) => setTimeout(resolve, 5));
  managers.forEach((manager, n) => {
    const internals = manager as unknown as {
      conns: Map<string, unknown>;
      users: Map<string, unknown>;
      rooms: Map<string, { members: Set<unknown>; tail: unknown }>;
      changedWhileOpening: Map<unknown, unknown>;
      adding: Map<string, unknown>;
      waiters: Map<string, unknown>;
      awayRooms: Map<string, unknown>;
      heldOut: Map<unknown, unknown>;
      inflightFrames: number;
    };
    if (internals.conns.size !== 0) fail(`node ${n}: ${internals.conns.size} connections left`);
    if (internals.users.size !== 0) fail(`node ${n}: ${internals.users.size} users left`);
    if (internals.rooms.size !== 0) fail(`node ${n}: ${internals.rooms.size} room states left (${[...internals.rooms.keys()].join(',')})`);
    if (internals.changedWhileOpening.size !== 0) fail(`node ${n}: changedWhileOpening holds ${internals.changedWhileOpening.size}`);
    if (internals.adding.size !== 0) fail(`node ${n}: adding holds ${internals.adding.size}`);
    // A broadcast refused after close() waits a while for a late copy: bounded by a timer.
    if (internals.waiters.size !== 0 && !shut.has(n)) fail(`node ${n}: ${internals.waiters.size} waiters left`);
    // A closed process hears no more of the cluster's presence: what it kept is garbage with it.
    if (internals.awayRooms.size !== 0 && !shut.has(n)) fail(`node ${n}: awayRooms holds ${internals.awayRooms.size}`);
    if (internals.heldOut.size !== 0) fail(`node ${n}: heldOut holds ${internals.heldOut.size}`);
    if (internals.inflightFrames !== 0) fail(`node ${n}: ${internals.inflightFrames} frames in flight`);
  });
  if (bus) {
    for (const [id, record] of bus.nodes) if (record.counts.size !== 0) fail(`bus node ${id}: presence counts ${[...record.counts.keys()].join(',')}`);
  }
  await Promise.all(managers.map((manager) => manager.close()));
  return violations;
}

describe('RoomManager model (property)', () => {
  it(
    'keeps its promises under random operations, on one process and on a LocalBus',
    () => assertModel(SETTINGS, config, step, runModel),
    60_000,
  );
});
