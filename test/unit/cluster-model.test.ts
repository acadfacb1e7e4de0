import fc from 'fast-check';
import { describe, it } from 'vitest';
import {
  LocalBus,
  RoomManager,
  type Backplane,
  type BackplaneHandlers,
  type Connection,
  type ConnectionHandlers,
  type LocalBackplane,
  type MembershipChange,
  type MembershipLoader,
  type PublishCid,
  type StoredMessage,
} from '../../src/index.js';
import { assertModel, modelSettings } from '../helpers/model.js';

/**
 * A model-based property test of membership across processes: two or three RoomManagers
 * on one LocalBus, driven through random sequences of connections opening and closing,
 * client join, leave and publish frames, server broadcasts, and addMember, removeMember
 * and invalidate on any process, the application's table changed first. Loader answers
 * are read when asked and may come late (held until a release, or a few ms later); room
 * subscriptions may be slow too.
 *
 * Every event gets a time on one logical clock. Once the run settled, each connection's
 * frames are checked against what the table and the calls promised:
 *
 * - a message id at most once, and a room's messages in seq order;
 * - a message whose broadcast or publish started after the connection was in the room
 *   (its welcome listed it, it was told `joined`, or an addMember made after it opened
 *   resolved) reaches it exactly once, unless a leave, a close or a removal of its user
 *   came before the cluster was next quiet;
 * - a message started after removeMember resolved does not reach the user, unless they
 *   were added or joined again;
 * - no message of a room after its `left` until a `joined`; a `joined` at seq s is
 *   followed by every seq after s while the connection stays; what each connection
 *   believes it is in is what its process says;
 * - once every connection closed, the managers keep no state about them.
 *
 * Replay a failure with CLUSTER_SEED=<seed> CLUSTER_PATH=<path> (printed by fast-check);
 * CLUSTER_RUNS and CLUSTER_LEN (steps per run, 40) widen a hunt.
 */

const SETTINGS = modelSettings('CLUSTER', { seed: 0xc1_0057, runs: 60, len: 40 });

const USERS = ['ann', 'ben', 'cat', 'dan'] as const;
const ROOMS = ['r1', 'r2', 'pub'] as const;
/** Anyone may join `pub` (canJoin); its participants are admitted nobody at first. */
const INITIAL: Record<string, string[]> = { r1: ['ann', 'ben'], r2: ['ben', 'cat'], pub: [] };

type Frame = { type: string; [key: string]: unknown };

interface Config {
  nodes: number;
  /** How loader calls answer when not held: at once, a tick later, or a few ms later. */
  loader: 'sync' | 'tick' | 'ms';
  subscribeMs: number;
  ttlMs: number;
}

type Op =
  | { k: 'open'; user: number; node: number }
  | { k: 'close'; conn: number }
  | { k: 'join'; conn: number; room: number }
  | { k: 'leave'; conn: number; room: number }
  | { k: 'publish'; conn: number; room: number }
  | { k: 'broadcast'; room: number; node: number }
  | { k: 'add'; room: number; user: number; node: number }
  | { k: 'remove'; room: number; user: number; node: number }
  | { k: 'invalidate'; room: number; node: number; silent: [add: boolean, user: number] | undefined }
  | { k: 'hold'; what: 'roomsOf' | 'membersOf' | 'subscribe' }
  | { k: 'release' }
  | { k: 'tick'; ms: number }
  | { k: 'settle' };
type Step = { op: Op; wait: boolean };

const idx = fc.nat({ max: 11 });
const room = fc.nat({ max: ROOMS.length - 1 });
const user = fc.nat({ max: USERS.length - 1 });
const node = fc.nat({ max: 2 });
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ k: fc.constant('open' as const), user, node }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('close' as const), conn: idx }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('join' as const), conn: idx, room }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('leave' as const), conn: idx, room }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('publish' as const), conn: idx, room }) },
  { weight: 7, arbitrary: fc.record({ k: fc.constant('broadcast' as const), room, node }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('add' as const), room, user, node }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('remove' as const), room, user, node }) },
  {
    weight: 1,
    arbitrary: fc.record({ k: fc.constant('invalidate' as const), room, node, silent: fc.option(fc.tuple(fc.boolean(), user), { nil: undefined }) }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('hold' as const), what: fc.constantFrom('roomsOf' as const, 'membersOf' as const, 'subscribe' as const) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('release' as const) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('tick' as const), ms: fc.constantFrom(0, 1, 3) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('settle' as const) }) },
);
const step: fc.Arbitrary<Step> = fc.record({ op, wait: fc.boolean() });
const config: fc.Arbitrary<Config> = fc.record({
  nodes: fc.integer({ min: 2, max: 3 }),
  loader: fc.constantFrom('sync' as const, 'tick' as const, 'ms' as const),
  subscribeMs: fc.constantFrom(0, 0, 1, 4),
  ttlMs: fc.constantFrom(30_000, 30_000, 2),
});

/** Loader answers and subscriptions held until the next release. */
class Gates {
  readonly held = new Set<'roomsOf' | 'membersOf' | 'subscribe'>();
  private readonly waiting: (() => void)[] = [];
  wait(what: 'roomsOf' | 'membersOf' | 'subscribe'): Promise<void> | undefined {
    if (!this.held.has(what)) return undefined;
    return new Promise((resolve) => this.waiting.push(resolve));
  }
  release(): void {
    this.held.clear();
    this.waiting.splice(0).forEach((resolve) => resolve());
  }
}

/** A LocalBus node whose subscriptions take a while, or wait for the gates. */
class SlowSubscribe implements Backplane {
  constructor(
    private readonly inner: LocalBackplane,
    private readonly ms: number,
    private readonly gates: Gates,
  ) {}
  get history() {
    return this.inner.history;
  }
  get presence() {
    return this.inner.presence;
  }
  start(handlers: BackplaneHandlers): Promise<void> {
    return this.inner.start(handlers);
  }
  publish(message: Omit<StoredMessage, 'seq'>, cid?: PublishCid, except?: string): Promise<StoredMessage> {
    return this.inner.publish(message, cid, except);
  }
  async subscribe(room: string): Promise<void> {
    await this.gates.wait('subscribe');
    if (this.ms > 0) await new Promise((resolve) => setTimeout(resolve, this.ms));
    return this.inner.subscribe(room);
  }
  unsubscribe(room: string): Promise<void> {
    return this.inner.unsubscribe(room);
  }
  announce(change: MembershipChange): Promise<void> {
    return this.inner.announce(change);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** What a connection did and received, each with its time on the run's clock. */
interface ConnModel {
  readonly n: number;
  readonly user: string;
  readonly node: number;
  readonly socket: ModelConn;
  readonly openedAt: number;
  closedAt: number | undefined;
  readonly received: { t: number; frame: Frame }[];
  /** Client frames that change membership: [time, kind, room]. */
  readonly sent: [t: number, kind: 'join' | 'leave', room: string, ref: string][];
}

class ModelConn implements Connection {
  bufferedAmount = 0;
  closedWith: { code: number; reason: string } | undefined;
  handlers!: ConnectionHandlers;
  constructor(private readonly observe: (frame: Frame) => void) {}
  send(text: string): boolean {
    if (this.closedWith) return false;
    this.observe(JSON.parse(text) as Frame);
    return true;
  }
  close(code: number, reason: string): void {
    if (this.closedWith) return;
    this.closedWith = { code, reason };
    queueMicrotask(() => this.handlers.closed(code, reason));
  }
}

/** A membership change of one user in one room, as the application made it. */
interface Change {
  readonly room: string;
  readonly user: string;
  readonly add: boolean;
  /** Made without addMember or removeMember, then told with invalidate. */
  readonly silent: boolean;
  /** When the table changed (and the call was made). */
  readonly at: number;
  /** When the call resolved; undefined until then. */
  done: number | undefined;
}

async function runModel(cfg: Config, steps: Step[]): Promise<string[]> {
  const violations: string[] = [];
  const fail = (what: string): void => {
    if (violations.length < 20) violations.push(what);
  };
  let clock = 0;
  const now = (): number => ++clock;

  const table = new Map<string, Set<string>>(Object.entries(INITIAL).map(([r, users]) => [r, new Set(users)]));
  const changes: Change[] = [];
  /** Times the run was quiet: nothing in flight, every frame answered. */
  const quiet: number[] = [];
  const gates = new Gates();
  let delays = 0;
  const answer = async <T>(what: 'roomsOf' | 'membersOf', read: () => T): Promise<T> => {
    // Read when asked, answered later: the answer may predate changes made meanwhile.
    const value = read();
    await gates.wait(what);
    if (cfg.loader === 'tick') await new Promise((resolve) => setTimeout(resolve, 0));
    if (cfg.loader === 'ms') await new Promise((resolve) => setTimeout(resolve, [0, 1, 2, 4][delays++ % 4]));
    return value;
  };
  const membership: MembershipLoader = {
    roomsOf: (u) => {
      const read = () => [...table].filter(([, users]) => users.has(u.id)).map(([r]) => r);
      return cfg.loader === 'sync' && !gates.held.has('roomsOf') ? read() : answer('roomsOf', read);
    },
    membersOf: (r) => {
      const read = () => [...(table.get(r) ?? [])];
      return cfg.loader === 'sync' && !gates.held.has('membersOf') ? read() : answer('membersOf', read);
    },
    canJoin: (_u, r) => r === 'pub',
  };

  const bus = new LocalBus();
  const managers: RoomManager[] = [];
  for (let i = 0; i < cfg.nodes; i++) {
    const manager = new RoomManager({
      authenticate: () => ({ id: 'unused' }),
      membership,
      membershipTtlMs: cfg.ttlMs,
      backplane: new SlowSubscribe(bus.node(), cfg.subscribeMs, gates),
      publishRate: false,
      joinRate: false,
      closeTimeoutMs: 200,
    });
    manager.on('error', (error, context) => fail(`node ${i}: error event ${context.phase}: ${error.message}`));
    managers.push(manager);
  }

  const conns: ConnModel[] = [];
  const inflight = new Set<Promise<unknown>>();
  const track = (promise: Promise<unknown>, what: string, then?: () => void): Promise<unknown> => {
    const guarded = promise.then(
      () => then?.(),
      (error: unknown) => fail(`${what} rejected: ${String(error)}`),
    );
    inflight.add(guarded);
    void guarded.then(() => inflight.delete(guarded));
    return guarded;
  };
  /** Refs of client frames not answered yet. */
  const unanswered = new Set<string>();
  let refs = 0;
  let counter = 0;
  /** Each message's data `n` → when it started and which connection published it (null: a broadcast). */
  const started = new Map<number, { at: number; by: ConnModel | null; room: string }>();

  const connAt = (i: number): ConnModel | undefined => {
    const open = conns.filter((c) => c.closedAt === undefined);
    return open.length === 0 ? undefined : open[i % open.length];
  };
  const send = (conn: ConnModel, frame: Record<string, unknown>): string => {
    const ref = `f${++refs}`;
    unanswered.add(ref);
    conn.socket.handlers.message(JSON.stringify({ ...frame, ref }), false);
    return ref;
  };
  /** Awaits an op unless something is held: what it waits for may be behind the gates. */
  const until = (promise: Promise<unknown>): Promise<unknown> => (gates.held.size > 0 ? Promise.resolve() : promise);
  const settle = async (): Promise<void> => {
    gates.release();
    let frames = -1;
    for (let i = 0; i < 100; i++) {
      await Promise.all([...inflight]);
      await new Promise((resolve) => setTimeout(resolve, 5));
      const total = conns.reduce((sum, c) => sum + c.received.length, 0);
      if (inflight.size === 0 && unanswered.size === 0 && total === frames) break;
      frames = total;
    }
    quiet.push(now());
  };

  for (const { op, wait } of steps) {
    switch (op.k) {
      case 'open': {
        const n = op.node % managers.length;
        let model!: ConnModel;
        const socket = new ModelConn((frame) => {
          model.received.push({ t: now(), frame });
          if (typeof frame.ref === 'string' && frame.type !== 'message') unanswered.delete(frame.ref);
        });
        model = { n: conns.length, user: USERS[op.user]!, node: n, socket, openedAt: now(), closedAt: undefined, received: [], sent: [] };
        conns.push(model);
        socket.handlers = managers[n]!.open(socket, { id: model.user });
        const ready = track(socket.handlers.ready, 'ready');
        if (wait) await until(ready);
        break;
      }
      case 'close': {
        const conn = connAt(op.conn);
        if (!conn) break;
        conn.closedAt = now();
        conn.socket.closedWith = { code: 1000, reason: 'bye' };
        conn.socket.handlers.closed(1000, 'bye');
        break;
      }
      case 'join':
      case 'leave': {
        const conn = connAt(op.conn);
        if (!conn) break;
        const r = ROOMS[op.room]!;
        const at = now();
        conn.sent.push([at, op.k, r, send(conn, { type: op.k, room: r })]);
        break;
      }
      case 'publish': {
        const conn = connAt(op.conn);
        if (!conn) break;
        const r = ROOMS[op.room]!;
        started.set(++counter, { at: now(), by: conn, room: r });
        send(conn, { type: 'publish', room: r, data: { n: counter } });
        break;
      }
      case 'broadcast': {
        const r = ROOMS[op.room]!;
        started.set(++counter, { at: now(), by: null, room: r });
        const p = track(managers[op.node % managers.length]!.broadcast(r, { n: counter }), 'broadcast');
        if (wait) await until(p);
        break;
      }
      case 'add':
      case 'remove': {
        const r = ROOMS[op.room]!;
        const u = USERS[op.user]!;
        const users = table.get(r)!;
        if (users.has(u) === (op.k === 'add')) break;
        if (op.k === 'add') users.add(u);
        else users.delete(u);
        const change: Change = { room: r, user: u, add: op.k === 'add', silent: false, at: now(), done: undefined };
        changes.push(change);
        const m = managers[op.node % managers.length]!;
        const p = track(op.k === 'add' ? m.addMember(r, u) : m.removeMember(r, u), op.k, () => void (change.done = now()));
        if (wait) await until(p);
        break;
      }
      case 'invalidate': {
        const r = ROOMS[op.room]!;
        let change: Change | undefined;
        if (op.silent) {
          const [add, which] = op.silent;
          const u = USERS[which]!;
          const users = table.get(r)!;
          if (users.has(u) !== add) {
            if (add) users.add(u);
            else users.delete(u);
            change = { room: r, user: u, add, silent: true, at: now(), done: undefined };
            changes.push(change);
          }
        }
        const p = track(managers[op.node % managers.length]!.invalidate(r), 'invalidate', () => {
          if (change) change.done = now();
        });
        if (wait) await until(p);
        break;
      }
      case 'hold':
        gates.held.add(op.what);
        break;
      case 'release':
        gates.release();
        break;
      case 'tick':
        await new Promise((resolve) => setTimeout(resolve, op.ms));
        break;
      case 'settle':
        await settle();
        break;
    }
    if (wait) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  await settle();

  // ------------------------------------------------------------------ checks
  const history = new Map<string, StoredMessage[]>();
  for (const r of ROOMS) history.set(r, (await bus.history.since(r, 0)) ?? []);
  const latest = (r: string): number => history.get(r)!.at(-1)?.seq ?? 0;
  /** The first quiet time after `t` (the end of the run at the latest). */
  const quietAfter = (t: number): number => quiet.find((q) => q > t) ?? Number.POSITIVE_INFINITY;
  const quietBefore = (t: number): number => [...quiet].reverse().find((q) => q < t) ?? 0;
  const participantAt = (r: string, u: string, t: number): boolean => {
    let is = INITIAL[r]!.includes(u);
    for (const c of changes) if (c.room === r && c.user === u && c.at < t) is = c.add;
    return is;
  };
  const changedIn = (r: string, u: string, add: boolean, from: number, to: number): boolean =>
    changes.some((c) => c.room === r && c.user === u && c.add === add && c.at > from && c.at < to);

  for (const conn of conns) {
    const label = `conn ${conn.n} (${conn.user}, node ${conn.node})`;
    if (conn.socket.closedWith && conn.closedAt === undefined) fail(`${label}: closed by the server ${JSON.stringify(conn.socket.closedWith)}`);
    const end = conn.closedAt ?? Number.POSITIVE_INFINITY;
    /** Per room: the message ids and seqs it received live, with when. */
    const got = new Map<string, Map<string, number>>();
    const gotSeqs = new Map<string, Set<number>>();
    /** Per room: when it came in (welcome, joined), with the seq it came in at. */
    const entries = new Map<string, { t: number; seq: number; reply: boolean }[]>();
    const state = new Map<string, { in: boolean; left: boolean; start: number; last: number }>();
    const stayEnds: [room: string, start: number, upTo: number][] = [];
    const gotSeq = (r: string, seq: number): void => {
      let seqs = gotSeqs.get(r);
      if (!seqs) gotSeqs.set(r, (seqs = new Set()));
      seqs.add(seq);
    };
    for (const [i, { t, frame }] of conn.received.entries()) {
      const r = typeof frame.room === 'string' ? frame.room : '';
      const s = state.get(r) ?? { in: false, left: false, start: 0, last: 0 };
      state.set(r, s);
      const enter = (seq: number, reply: boolean): void => {
        s.in = true;
        s.left = false;
        s.start = seq;
        const list = entries.get(r) ?? [];
        list.push({ t, seq, reply });
        entries.set(r, list);
      };
      switch (frame.type) {
        case 'welcome': {
          if (i !== 0) fail(`${label}: welcome is not its first frame`);
          const seqs = frame.seqs as Record<string, number>;
          for (const w of frame.rooms as string[]) {
            const st = { in: false, left: false, start: 0, last: 0 };
            state.set(w, st);
            if (!participantAt(w, conn.user, t) && !changedIn(w, conn.user, false, quietBefore(t), t)) fail(`${label}: welcome lists ${w}, not a participant`);
            const list = entries.get(w) ?? [];
            list.push({ t, seq: seqs[w] ?? 0, reply: false });
            entries.set(w, list);
            Object.assign(st, { in: true, start: seqs[w] ?? 0 });
          }
          break;
        }
        case 'joined':
          // A join of a room it is in is answered joined, and its stay goes on.
          if (s.in && frame.ref === undefined) fail(`${label}: joined ${r} at ${String(frame.seq)} while in it`);
          if (!s.in) enter(frame.seq as number, frame.ref !== undefined);
          break;
        case 'left':
          if (!s.in && frame.ref === undefined) fail(`${label}: left ${r} while not in it`);
          if (s.in) stayEnds.push([r, s.start, s.last]);
          s.in = false;
          s.left = true;
          break;
        case 'ack':
          gotSeq(r, frame.seq as number);
          if (s.in) s.last = Math.max(s.last, frame.seq as number);
          break;
        case 'message': {
          const seq = frame.seq as number;
          const id = frame.id as string;
          const ids = got.get(r) ?? new Map<string, number>();
          got.set(r, ids);
          if (ids.has(id)) fail(`${label}: ${r} seq ${seq} (${id}) received twice`);
          ids.set(id, t);
          const before = Math.max(0, ...(gotSeqs.get(r) ?? []));
          if (seq <= before) fail(`${label}: ${r} seq ${seq} after seq ${before}`);
          gotSeq(r, seq);
          if (s.left) fail(`${label}: ${r} seq ${seq} after left, without joined`);
          if (s.in) s.last = Math.max(s.last, seq);
          break;
        }
        case 'error':
          if (frame.code !== 'forbidden') fail(`${label}: error ${String(frame.code)}: ${String(frame.message)}`);
          break;
      }
    }
    // A stay from joined.seq s is sent every seq after s while it lasts (to the room's end, if open).
    for (const [r, s] of state) if (s.in && conn.closedAt === undefined) stayEnds.push([r, s.start, latest(r)]);
    for (const [r, start, upTo] of stayEnds) {
      const seqs = gotSeqs.get(r) ?? new Set<number>();
      const until = upTo === Number.POSITIVE_INFINITY ? Math.max(start, ...seqs) : upTo;
      for (let seq = start + 1; seq <= until; seq++) {
        if (!seqs.has(seq)) {
          fail(`${label}: in ${r} from seq ${start}, never got seq ${seq} (got ${[...seqs].sort((a, b) => a - b).join(',')})`);
          break;
        }
      }
    }
    // What it believes it is in is what its process says.
    if (conn.closedAt === undefined) {
      const believed = [...state].filter(([, s]) => s.in).map(([r]) => r).sort();
      const actual = managers[conn.node]!.roomsOf(conn.socket.handlers.id).sort();
      if (believed.join() !== actual.join()) fail(`${label}: believes it is in [${believed.join()}], its process says [${actual.join()}]`);
    }

    const leftBefore = (r: string, t: number): boolean => {
      const last = conn.sent.filter(([at, , room]) => room === r && at < t).at(-1);
      return last?.[1] === 'leave';
    };
    /** When each of its frames was answered (frames sent before welcome are answered after it). */
    const answeredAt = new Map<string, number>();
    for (const { t, frame } of conn.received) if (typeof frame.ref === 'string' && !answeredAt.has(frame.ref)) answeredAt.set(frame.ref, t);
    /** A leave of `r` sent before `to` and answered after `from`. */
    const leaveIn = (r: string, from: number, to: number): boolean =>
      conn.sent.some(([at, kind, room, ref]) => kind === 'leave' && room === r && at < to && (answeredAt.get(ref) ?? Number.POSITIVE_INFINITY) > from);
    const joinIn = (r: string, from: number, to: number): boolean => conn.sent.some(([at, kind, room]) => kind === 'join' && room === r && at > from && at < to);
    for (const [r, messages] of history) {
      const ids = got.get(r) ?? new Map<string, number>();
      for (const m of messages) {
        const n = (m.data as { n: number }).n;
        const origin = started.get(n)!;
        if (origin.by === conn) continue;
        const q = quietAfter(origin.at);
        const settled = end > q;
        // Reached: it entered the room before the message started, and nothing that may take
        // it out came before the cluster was quiet again.
        const reasons: string[] = [];
        if (settled) {
          for (const e of entries.get(r) ?? []) {
            if (e.t >= origin.at || leftBefore(r, e.t) || leaveIn(r, e.t, q)) continue;
            const admitted = r === 'pub' && e.reply;
            if (!admitted && !participantAt(r, conn.user, e.t)) continue;
            if (changedIn(r, conn.user, false, quietBefore(e.t), q)) continue;
            reasons.push(`${e.reply ? 'joined (reply)' : 'entered'} at t${e.t} seq ${e.seq}`);
          }
          for (const c of changes) {
            if (!c.add || c.room !== r || c.user !== conn.user || c.done === undefined || c.done >= origin.at) continue;
            // invalidate promises the next broadcast's participants, not connections still opening.
            const welcomed = conn.received[0]?.t ?? Number.POSITIVE_INFINITY;
            if ((c.silent ? welcomed : conn.openedAt) > (c.silent ? origin.at : c.at) || leftBefore(r, c.at) || leaveIn(r, c.at, q) || changedIn(r, conn.user, false, c.at, q)) continue;
            reasons.push(`added at t${c.at}, resolved t${c.done}`);
          }
        }
        const at = ids.get(m.id);
        if (reasons.length > 0 && at === undefined) fail(`${label}: missed ${r} seq ${m.seq} started t${origin.at} (${reasons.join('; ')})`);
        // Not reached: removed before it started, and neither added nor joined again since.
        if (at !== undefined) {
          for (const c of changes) {
            if (c.add || c.room !== r || c.user !== conn.user || c.done === undefined || c.done >= origin.at) continue;
            if (changedIn(r, conn.user, true, c.at, q) || joinIn(r, c.at, q)) continue;
            fail(`${label}: got ${r} seq ${m.seq} started t${origin.at}, after its removal resolved at t${c.done}`);
          }
        }
      }
    }
  }

  // Everyone goes away: nothing stays behind.
  for (const conn of conns) {
    if (conn.closedAt !== undefined) continue;
    conn.closedAt = now();
    conn.socket.closedWith ??= { code: 1000, reason: 'bye' };
    conn.socket.handlers.closed(1000, 'bye');
  }
  await settle();
  managers.forEach((manager, n) => {
    const internals = manager as unknown as {
      conns: Map<string, unknown>;
      users: Map<string, unknown>;
      rooms: Map<string, unknown>;
      changedWhileOpening: Map<unknown, unknown>;
      adding: Map<string, unknown>;
      waiters: Map<string, unknown>;
      heldOut: Map<unknown, unknown>;
      inflightFrames: number;
    };
    if (internals.conns.size !== 0) fail(`node ${n}: ${internals.conns.size} connections left`);
    if (internals.users.size !== 0) fail(`node ${n}: ${internals.users.size} users left`);
    if (internals.rooms.size !== 0) fail(`node ${n}: room states left (${[...internals.rooms.keys()].join(',')})`);
    if (internals.changedWhileOpening.size !== 0) fail(`node ${n}: changedWhileOpening holds ${internals.changedWhileOpening.size}`);
    if (internals.adding.size !== 0) fail(`node ${n}: adding holds ${[...internals.adding.keys()].join(',')}`);
    if (internals.waiters.size !== 0) fail(`node ${n}: ${internals.waiters.size} waiters left`);
    if (internals.heldOut.size !== 0) fail(`node ${n}: heldOut holds ${internals.heldOut.size}`);
    if (internals.inflightFrames !== 0) fail(`node ${n}: ${internals.inflightFrames} frames in flight`);
  });
  await Promise.all(managers.map((manager) => manager.close()));
  return violations;
}

describe('RoomManager cluster membership model (property)', () => {
  it(
    'reaches every participant and nobody removed, on two or three processes with slow loaders and subscriptions',
    () => assertModel(SETTINGS, config, step, runModel),
    Math.max(60_000, SETTINGS.runs * 400),
  );
});
