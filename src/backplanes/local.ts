import type { Backplane, BackplaneHandlers, CidClaim, ClusterCids, ClusterPresence, LostUser, MembershipChange, PublishCid } from '../backplane.js';
import { InMemoryHistoryStore, type StoredMessage } from '../history-store.js';

/** The latest broadcasts' `except`s a {@link LocalBus} keeps for reads of its history. */
const MAX_EXCEPTS = 1_000;

/**
 * The bus's history: a message read back carries the connection its broadcast left out,
 * as the Redis backplane's stream entries do (for the latest {@link MAX_EXCEPTS} of them).
 */
class BusHistory extends InMemoryHistoryStore {
  private readonly excepts = new Map<string, string>();

  except(id: string, connectionId: string): void {
    if (this.excepts.size >= MAX_EXCEPTS) this.excepts.delete(this.excepts.keys().next().value as string);
    this.excepts.set(id, connectionId);
  }

  override since(room: string, afterSeq: number, untilSeq?: number): StoredMessage[] | null {
    const messages = super.since(room, afterSeq, untilSeq);
    if (!messages || this.excepts.size === 0) return messages;
    return messages.map((message) => {
      const except = this.excepts.get(message.id);
      return except === undefined ? message : { ...message, except };
    });
  }
}

/** Options of a {@link LocalBus}. */
export interface LocalBusOptions {
  /** Messages kept per room for `resume`. @default 500 */
  historyLimit?: number | undefined;
  /** A node whose heartbeat is older than this no longer counts as online. @default 15000 */
  nodeTimeoutMs?: number | undefined;
  /** How often each node beats. @default nodeTimeoutMs / 3 */
  heartbeatMs?: number | undefined;
}

interface NodeRecord {
  readonly node: LocalBackplane;
  handlers: BackplaneHandlers | undefined;
  readonly rooms: Set<string>;
  /** Open connections per user on this node. */
  readonly counts: Map<string, number>;
  /** The rooms of each user's first connection on this node: where its offline goes if the node crashes. */
  readonly userRooms: Map<string, readonly string[]>;
  lastBeat: number;
}

/** A cid a node is publishing (`node`) or one published as message `id`, `seq`. */
interface CidRecord {
  readonly node?: string;
  readonly id?: string;
  readonly seq?: number;
  readonly expiresAt: number;
}

/**
 * An in-process backplane: several `RoomManager`s in one process share rooms, seqs,
 * history, membership changes and presence, exactly as processes on Redis do. Useful
 * for tests and for running the contract suite; it is not a way to scale.
 *
 * @example
 * ```ts
 * import { LocalBus, RoomManager } from 'roomwire';
 *
 * const bus = new LocalBus();
 * const membership = { roomsOf: () => ['lobby'], membersOf: () => ['alice', 'bob'] };
 * const a = new RoomManager({ authenticate: () => ({ id: 'alice' }), membership, backplane: bus.node() });
 * const b = new RoomManager({ authenticate: () => ({ id: 'bob' }), membership, backplane: bus.node() });
 * ```
 */
export class LocalBus {
  /** The shared seq and history. */
  readonly history: InMemoryHistoryStore;
  /** @internal The same history, as the nodes write to it. */
  readonly busHistory: BusHistory;
  /** @internal */
  readonly nodes = new Map<string, NodeRecord>();
  /** @internal */
  readonly nodeTimeoutMs: number;
  /** @internal */
  readonly heartbeatMs: number;
  private nextNode = 0;
  /** Publish cids, claimed or published, shared by the nodes as Redis keys are. */
  private readonly cids = new Map<string, CidRecord>();

  constructor(options: LocalBusOptions = {}) {
    this.busHistory = new BusHistory(options.historyLimit ?? 500);
    this.history = this.busHistory;
    this.nodeTimeoutMs = options.nodeTimeoutMs ?? 15_000;
    this.heartbeatMs = options.heartbeatMs ?? Math.max(1, Math.floor(this.nodeTimeoutMs / 3));
  }

  /** A new node of this bus: the backplane to give one `RoomManager`. */
  node(): LocalBackplane {
    return new LocalBackplane(this, `local-${++this.nextNode}`);
  }

  /** @internal The live record of `key`, if any. */
  cid(key: string): CidRecord | undefined {
    const now = Date.now();
    // Records are set with at most a few windows; sweeping the oldest keeps the map bounded.
    for (const [oldKey, record] of this.cids) {
      if (record.expiresAt > now) break;
      this.cids.delete(oldKey);
    }
    const record = this.cids.get(key);
    return record && record.expiresAt > now ? record : undefined;
  }

  /** @internal */
  setCid(key: string, record: Omit<CidRecord, 'expiresAt'>, ttlMs: number): void {
    this.cids.delete(key);
    this.cids.set(key, { ...record, expiresAt: Date.now() + ttlMs });
  }

  /** @internal */
  deleteCid(key: string): void {
    this.cids.delete(key);
  }

  /** @internal Live nodes: heartbeat younger than the timeout. */
  liveNodes(): NodeRecord[] {
    const cutoff = Date.now() - this.nodeTimeoutMs;
    const out: NodeRecord[] = [];
    for (const record of this.nodes.values()) if (record.lastBeat >= cutoff) out.push(record);
    return out;
  }

  /**
   * @internal Forgets the crashed nodes whose heartbeat went stale, as a survivor on Redis
   * does: their users that no node left has are lost (offline), with their rooms. Only
   * killed nodes: in one process a node that is still running is never cut off, however
   * late its timer fires after a blocked event loop.
   */
  sweep(): LostUser[] {
    const cutoff = Date.now() - this.nodeTimeoutMs;
    const lost = new Map<string, Set<string>>();
    for (const [id, record] of this.nodes) {
      if (record.lastBeat >= cutoff || record.handlers !== undefined) continue;
      this.nodes.delete(id);
      for (const user of record.counts.keys()) {
        const rooms = lost.get(user) ?? new Set<string>();
        for (const room of record.userRooms.get(user) ?? []) rooms.add(room);
        lost.set(user, rooms);
      }
    }
    if (lost.size === 0) return [];
    // Every node not swept holds its users, stale or not, as on Redis (see `track`).
    const left = [...this.nodes.values()];
    return [...lost].filter(([user]) => !left.some((record) => record.counts.has(user))).map(([user, rooms]) => ({ user, rooms: [...rooms] }));
  }
}

/** One node of a {@link LocalBus}; create it with {@link LocalBus.node}. */
export class LocalBackplane implements Backplane {
  /** The bus's shared history. */
  readonly history: InMemoryHistoryStore;
  /** Presence across the bus's nodes. */
  readonly presence: ClusterPresence;
  /** Publishes in progress by cid, across the bus's nodes. */
  readonly cids: ClusterCids;
  private readonly record: NodeRecord;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** Killed: a crashed process writes nothing more. */
  private dead = false;

  /** @internal Use {@link LocalBus.node}. */
  constructor(
    private readonly bus: LocalBus,
    /** This node's id. */
    readonly nodeId: string,
  ) {
    this.history = bus.history;
    this.record = { node: this, handlers: undefined, rooms: new Set(), counts: new Map(), userRooms: new Map(), lastBeat: 0 };
    const record = this.record;
    this.presence = {
      nodeId,
      track: (user, delta, rooms) => {
        if (this.dead) return Promise.resolve(false);
        const next = (record.counts.get(user) ?? 0) + delta;
        if (next > 0) record.counts.set(user, next);
        else record.counts.delete(user);
        if (next <= 0) record.userRooms.delete(user);
        else if (next === 1 && delta === 1 && rooms) record.userRooms.set(user, [...rooms]);
        // Crossed zero here, and no other node has the user: crossed in the cluster. A
        // killed node not swept yet still holds its users: its sweep says their offline.
        const crossed = (delta === 1 ? next === 1 : next <= 0) && ![...bus.nodes.values()].some((other) => other !== record && other.counts.has(user));
        return Promise.resolve(crossed);
      },
      onlineUsers: () => {
        const users = new Set<string>();
        for (const live of bus.liveNodes()) for (const user of live.counts.keys()) users.add(user);
        return Promise.resolve([...users]);
      },
      nodesOf: (user) => Promise.resolve(bus.liveNodes().filter((live) => live.counts.has(user)).map((live) => live.node.nodeId)),
    };
    this.cids = {
      claim: (key, holdMs) => {
        const held = bus.cid(key);
        let claim: CidClaim;
        if (held?.id !== undefined && held.seq !== undefined) claim = { state: 'published', id: held.id, seq: held.seq };
        else if (held && held.node !== nodeId) claim = { state: 'busy', retryMs: held.expiresAt - Date.now() };
        else {
          bus.setCid(key, { node: nodeId }, holdMs);
          claim = { state: 'claimed' };
        }
        return Promise.resolve(claim);
      },
      release: (key) => {
        if (bus.cid(key)?.node === nodeId) bus.deleteCid(key);
        return Promise.resolve();
      },
    };
  }

  start(handlers: BackplaneHandlers): Promise<void> {
    this.record.handlers = handlers;
    this.record.lastBeat = Date.now();
    this.bus.nodes.set(this.nodeId, this.record);
    this.timer = setInterval(() => {
      this.record.lastBeat = Date.now();
      // Survivors clean up after crashed nodes, and say offline for their users, as on Redis.
      const lost = this.bus.sweep();
      if (lost.length > 0) this.record.handlers?.presence('offline', lost);
    }, this.bus.heartbeatMs);
    this.timer.unref?.();
    return Promise.resolve();
  }

  publish(message: Omit<StoredMessage, 'seq'>, cid?: PublishCid, except?: string): Promise<StoredMessage> {
    if (this.record.handlers === undefined) return Promise.reject(new Error('backplane is not started or was closed'));
    const earlier = cid && this.bus.cid(cid.key);
    if (earlier?.id !== undefined && earlier.seq !== undefined) return Promise.resolve({ ...message, id: earlier.id, seq: earlier.seq });
    const stored = this.history.append(message);
    if (except !== undefined) this.bus.busHistory.except(stored.id, except);
    if (cid && cid.windowMs > 0) this.bus.setCid(cid.key, { id: stored.id, seq: stored.seq }, cid.windowMs);
    // Appended and queued in one synchronous step: each subscriber's microtasks run in
    // append order, so it receives a room's messages in seq order.
    for (const record of this.bus.nodes.values()) {
      const handlers = record.handlers;
      if (handlers && record.rooms.has(stored.room)) queueMicrotask(() => handlers.message(stored, except));
    }
    return Promise.resolve(stored);
  }

  subscribe(room: string): Promise<void> {
    this.record.rooms.add(room);
    return Promise.resolve();
  }

  unsubscribe(room: string): Promise<void> {
    this.record.rooms.delete(room);
    return Promise.resolve();
  }

  announce(change: MembershipChange): Promise<void> {
    for (const record of this.bus.nodes.values()) {
      const handlers = record.handlers;
      if (handlers && record !== this.record) queueMicrotask(() => handlers.membership(change));
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.stop();
    this.bus.nodes.delete(this.nodeId);
    return Promise.resolve();
  }

  /**
   * Stops this node as a crash would: no more heartbeats, deliveries or cleanup. Its
   * users keep counting as online until `nodeTimeoutMs` passes; then a live node says
   * `offline` for those no other node has. For tests.
   */
  kill(): void {
    this.dead = true;
    this.stop();
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.record.handlers = undefined;
    this.record.rooms.clear();
  }
}
