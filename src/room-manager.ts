import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import type { Handshake, Principal } from './authenticator.js';
import { PARTICIPANTS_PER_NOTICE, type Backplane, type ClusterCids, type LostUser, type MembershipChange } from './backplane.js';
import type { Connection, ConnectionHandlers, ConnectionInfo } from './connection.js';
import { DedupeWindow } from './dedupe-window.js';
import type { DeliveryReport } from './delivery-report.js';
import { ERROR_CODES, HandshakeError, RoomwireError, isHandshakeError, isRoomwireError, type ErrorCode } from './errors.js';
import { InMemoryHistoryStore, type HistoryStore, type StoredMessage } from './history-store.js';
import { createIdGenerator } from './ids.js';
import { guardedLogger, silentLogger, type Logger } from './logger.js';
import { MembershipCache, toStringSet, type MembersSnapshot } from './membership-cache.js';
import type { MaybePromise } from './membership-loader.js';
import { resolveOptions, type ResolvedOptions, type RoomManagerOptions } from './options.js';
import { decodeClientFrame } from './protocol/decode.js';
import { encodeAck, encodeData, encodeMessageFrame, encodeServerFrame } from './protocol/encode.js';
import type { ClientFrame, JoinFrame, LeaveFrame, PublishFrame, ResumeFrame, ServerFrame } from './protocol/frames.js';
import { CloseCode, MAX_EPOCH_LENGTH, PROTOCOL_VERSION, ROOM_NAME_RULE, isRoomName } from './protocol/limits.js';
import { SmallMap, SmallSet } from './small-collections.js';
import { MAX_TIMER_MS, TimeoutError, withTimeout } from './timeout.js';
import { TokenBucket } from './token-bucket.js';
import type { RateLimit } from './options.js';

/** Why a connection entered a room. */
export type JoinReason = 'auto' | 'join' | 'ensure' | 'member' | 'server';
/**
 * Why a connection left a room: `leave`, the client sent `leave`; `removed`, its user
 * stopped being a participant (`removeMember`, or ensure-participants found the loader no
 * longer lists them); `server`, a server-side `leave()`, or the connection closed (one
 * event per room it was in, right before `disconnect`).
 */
export type LeaveReason = 'leave' | 'removed' | 'server';

/** The typed events of a {@link RoomManager}. */
export interface RoomManagerEvents {
  /** A connection was authenticated, auto-joined and sent `welcome`. */
  connect: (event: { connectionId: string; user: string; rooms: string[] }) => void;
  /**
   * A connection closed: one for every `connect`. A connection that closes before its
   * `welcome` (its `roomsOf` answer still on its way) raises neither.
   */
  disconnect: (event: { connectionId: string; user: string; code: number; reason: string }) => void;
  /**
   * A connection entered a room. For the rooms it was auto-joined to (`reason` `auto`), once
   * `welcome` was sent, right before `connect`; with a backplane, the rooms of a `roomsOf`
   * retried after it failed at connect (also `auto`) later, each with its `joined` frame.
   */
  join: (event: { connectionId: string; user: string; room: string; reason: JoinReason }) => void;
  /** A connection left a room. */
  leave: (event: { connectionId: string; user: string; room: string; reason: LeaveReason }) => void;
  /** A message was accepted and broadcast. */
  message: (message: StoredMessage) => void;
  /** What a broadcast reached. */
  delivery: (report: DeliveryReport) => void;
  /** A connection could not keep up (its unsent bytes passed `maxBufferedBytes`) and was closed with 4008. */
  slow: (event: { connectionId: string; user: string; bufferedAmount: number }) => void;
  /** A connection was refused a frame by its rate limit (`kind`), or closed with 4008 for sustained abuse (`closed`). */
  rateLimited: (event: { connectionId: string; user: string; kind: 'publish' | 'join'; closed: boolean }) => void;
  /** Something failed that the manager recovered from (a loader call, a send, a hook). */
  error: (error: Error, context: { phase: string; connectionId?: string; room?: string; user?: string }) => void;
}

/** Options of a server-side {@link RoomManager.broadcast}. */
export interface BroadcastOptions {
  /** The sending user's id, or null (the default) for the server. */
  from?: string | null | undefined;
  /**
   * A connection id that does not get the message (the one that caused it). With a
   * backplane, on whichever process holds it: the id travels with the message.
   */
  except?: string | undefined;
}

/** Counts for dashboards and health checks. */
export interface RoomManagerStats {
  /** Open connections (including ones still auto-joining). */
  connections: number;
  /** Users with at least one open connection. */
  users: number;
  /** Rooms with at least one connection of this process. */
  rooms: number;
  /** Messages broadcast since start. */
  messages: number;
  /** Rooms whose participants are cached. */
  cachedRooms: number;
}

interface Membership {
  readonly conn: ConnState;
  /** `conn.socket`, here too: the broadcast reaches each socket without reading its connection's state. */
  readonly socket: Connection;
  mode: 'member' | 'admitted';
  /** The seq of the first message sent live to this connection in the room; 0 before any. */
  firstSeq: number;
}

interface UserState {
  readonly id: string;
  /** `id` as JSON, for the `from` of every message the user publishes. */
  readonly idJson: string;
  principal: Principal;
  /** Usually one: a one-entry set holds no hash table. */
  readonly conns: SmallSet<ConnState>;
  /** Connections past `welcome` and not closed. */
  open: number;
  /**
   * With presence on: rooms the user's connections left, and rooms of its connections
   * that closed while another stayed open, so the `offline` at the last close reaches
   * them too (bounded like a connection's left rooms). Usually undefined.
   */
  offlineRooms: Set<string> | undefined;
}

/**
 * Frames received before `welcome`, answered after it in order: kept whole up to
 * {@link MAX_INFLIGHT_FRAMES} frames and `maxFrameBytes` bytes, then as the `ref` of a
 * refusal (`rate_limited`) up to as many again; past that the connection is closed 4008.
 */
interface EarlyFrames {
  readonly frames: ([data: string | Uint8Array, isBinary: boolean] | { readonly refused: string | undefined })[];
  bytes: number;
  /** Refusals among `frames`. */
  refused: number;
  /** Closed with 4008 for sending too many. */
  closing: boolean;
}

interface ConnState {
  readonly id: string;
  readonly user: UserState;
  readonly principal: Principal;
  readonly socket: Connection;
  /** Usually one: a one-entry map holds no hash table. */
  readonly rooms: SmallMap<string, Membership>;
  /**
   * Rooms this connection left: auto-join and ensure-participants never put it back.
   * The shared empty set until the first leave (most connections never leave a room).
   */
  left: ReadonlySet<string>;
  state: 'opening' | 'open' | 'closed';
  /** Frames received before `welcome` was sent (state `opening`), handled right after it. */
  early: EarlyFrames | undefined;
  /** The tail of this connection's frame handling; frames are handled in arrival order. */
  queue: Promise<void> | undefined;
  inflight: number;
  /** Rate limits, made on first use: an idle connection holds none. */
  publishBucket: TokenBucket | undefined;
  joinBucket: TokenBucket | undefined;
  strikes: TokenBucket | undefined;
  /** The id of the last message whose send to this connection threw, for the fallback. */
  lastFailedId: string;
  readonly openedAt: number;
  expiryTimer: ReturnType<typeof setTimeout> | undefined;
}

interface RoomState {
  readonly name: string;
  /** `name` as JSON, for every frame of the room. */
  readonly nameJson: string;
  readonly members: Set<Membership>;
  /** The tail of this room's ordered work (broadcasts, joins, replays). */
  tail: Promise<void> | undefined;
  /** What the last reconciliation found; reused while nothing it depends on changed. */
  survey: RoomSurvey | undefined;
  /** The seq of the last broadcast sent to the room's connections (0: none yet). */
  lastSent: number;
}

/** The room's participants as seen by the last reconciliation. */
interface RoomSurvey {
  /** `RoomManager.topology` and the membership stamp it was taken at. */
  readonly topology: number;
  readonly stamp: number;
  /** Participants with an open connection. */
  readonly online: number;
  /** Participants with at least one open connection in the room. */
  readonly inRoom: number;
  /** Open participant connections neither in the room nor gone by `leave`: only the fallback reaches them. */
  readonly missing: number;
}

/**
 * A room this process receives from the backplane, and the sequencer that turns the
 * subscription's (and its own publishes') copies into one delivery per seq, in order.
 */
interface RoomFeed {
  readonly room: string;
  /** Settles once subscribed and `last` holds the baseline. */
  ready: Promise<void>;
  active: boolean;
  /** The highest seq handed to local delivery (queued in room order). */
  last: number;
  /** The highest seq whose local delivery ran: what a `joined` or a replay is measured against. */
  sent: number;
  /** Messages ahead of `last + 1`, held until the missing ones arrive or are fetched. */
  readonly pending: Map<number, StoredMessage>;
  gapTimer: ReturnType<typeof setTimeout> | undefined;
  filling: boolean;
  /** A fill asked for while one was running: where the next one must reach. */
  wanted: number;
  /**
   * Set when the feed was opened by a message delivered here directly (ensure-participants
   * brought a connection in): the baseline starts there, and what came after is fetched.
   */
  startAt: number | undefined;
  /** When the sweep first saw the room without local connections. */
  idleSince: number | undefined;
}

/** An `addMember`, here or announced by another process. */
interface Addition {
  /**
   * The room's seq when it was made (perhaps still being read): its connections get the
   * messages after it. Undefined: what follows their entry.
   */
  readonly from: MaybePromise<number | undefined>;
}

/** Additions of one user to one room waiting for their turn; see `RoomManager.adding`. */
interface Adding {
  /** The room and user, as JSON. */
  readonly key: string;
  /** Set by a `removeMember` made meanwhile: they put nobody in. */
  cancelled: boolean;
  /** How many wait. */
  waiting: number;
}

/** An addition's hold on a connection it is putting in a room; see `RoomManager.entering`. */
interface EnteringMark {
  /** How many additions hold it (a `participants` notice and an `addMember`, say). */
  holders: number;
  /** The lowest seq its additions start after, where known; Infinity: none known. */
  from: number;
  /** The lowest seq a broadcast left the connection out of while it was held; Infinity: none yet. */
  leftOut: number;
  /**
   * Seqs of broadcasts made meanwhile that leave this connection out anyway (it caused
   * them: `except`): the addition does not send them either. Usually undefined.
   */
  excepted: Set<number> | undefined;
}

/** The key of a room and user in `RoomManager.adding`. */
const addingKey = (room: string, user: string): string => JSON.stringify([room, user]);

/** What `RoomManager.missedSince` read: the messages after `seq` up to `sent`, what the room's connections here were sent. */
interface MissedRead {
  readonly seq: number;
  readonly missed: readonly StoredMessage[];
  readonly sent: number;
}

/** The part of `read` for a connection that starts after `after` (undefined: after `read.sent`), at or past `read.seq`. */
function narrowMissed(read: MissedRead, after: number | undefined): { seq: number; missed: readonly StoredMessage[] } {
  const seq = Math.max(read.seq, after === undefined ? read.sent : Math.min(after, read.sent));
  return seq === read.seq ? read : { seq, missed: read.missed.filter((m) => m.seq > seq) };
}

/** A local publish waiting for its local delivery. */
interface DeliveryWaiter {
  /** The connection that does not get the message (the publisher). */
  readonly except: ConnState | undefined;
  readonly at: number;
  /** Set once the backplane accepted it: what a release without local delivery reports. */
  message: StoredMessage | undefined;
  resolve(delivered: { message: StoredMessage; report: DeliveryReport }): void;
}

/** How long a seq gap may stay open before the missing messages are fetched from the history. */
const GAP_WAIT_MS = 250;
/** Messages held ahead of a gap before it is filled at once, without waiting. */
const MAX_PENDING = 10_000;
/** How often rooms without local connections are looked at, and stale waiters released. */
const FEED_SWEEP_MS = 5_000;
/** A room without local connections for this long is unsubscribed (not sooner: avoids churn). */
const FEED_IDLE_MS = 10_000;
/** A publish whose local delivery has not happened by then resolves with an empty report. */
const WAITER_TTL_MS = 30_000;
/**
 * How long the copy of a publish the backplane did not confirm (a timeout, a reply lost
 * with its connection) is still awaited: it may have been stored and sent all the same.
 */
const UNCONFIRMED_WAIT_MS = 10_000;
/** On the error of an unconfirmed publish: its message if its copy arrives after all. */
const kLate = Symbol('roomwire.late');

/** The promise of the late copy an unconfirmed publish's error carries, if any. */
function lateCopyOf(error: unknown): Promise<StoredMessage> | undefined {
  return typeof error === 'object' && error !== null ? (error as { [kLate]?: Promise<StoredMessage> })[kLate] : undefined;
}
/**
 * How long a process holds a publish's cid in the cluster while `onPublish` runs: a retry
 * on another process waits for it up to that long, and no longer if the process died.
 */
const CID_CLAIM_MS = 30_000;
/** The longest wait between two looks at a cid another process is publishing. */
const CID_POLL_MAX_MS = 1_000;
/** Earlier stays of one connection in one room a resume keeps apart; older ones are forgotten. */
const MAX_STAYS_PER_ROOM = 16;
/**
 * Attempts of `roomsOf` for one connection in backplane mode, and the first backoff; the
 * same for a `membersOf` that failed while another process's notice was checked.
 */
const ROOMS_OF_ATTEMPTS = 6;
const ROOMS_OF_BACKOFF_MS = 500;

/** What sending one broadcast frame to one connection came to. */
type SendOutcome = 0 | 1 | 2;
const SENT: SendOutcome = 0;
const SLOW: SendOutcome = 1;
const FAILED: SendOutcome = 2;

/** Publish cids remembered at once; the oldest are forgotten first past this. */
const MAX_DEDUPE_ENTRIES = 100_000;
/** Frames one connection may have waiting for handling before more are refused. */
const MAX_INFLIGHT_FRAMES = 256;
/** Users whose rooms a process keeps for a later `offline` from another (`awayRooms`); the oldest are forgotten first past this. */
const MAX_AWAY_USERS = 10_000;

/** Pending `except`s of broadcasts from other processes (see `remoteExcepts`): far more than are ever in flight. */
const MAX_REMOTE_EXCEPTS = 1_000;
const noop = (): void => {};
/** Returned by membership calls that have nothing to wait for, without a new promise each time. */
const RESOLVED: Promise<void> = Promise.resolve();


function byteLength(data: string | Uint8Array): number {
  return typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
}

/**
 * The UTF-8 bytes of parsed client data encoded as JSON again.
 * @throws {RoomwireError} `bad_request` when JSON cannot encode it (nesting too deep).
 */
function jsonBytes(data: unknown): number {
  return Buffer.byteLength(encodeData(data));
}

/**
 * How much longer publish data can be as JSON than in the frame that carried it: a number
 * re-encodes up to 5.25 times as long (`1e20` is `100000000000000000000`); strings and
 * everything else never grow. A frame under `maxMessageBytes / DATA_GROWTH` cannot carry
 * data over the limit.
 */
const DATA_GROWTH = 6;

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/**
 * The core of roomwire: connections, users, rooms and broadcasts, knowing no framework
 * and no socket library. A transport adapter authenticates each upgrade with
 * {@link RoomManager.authenticate}, then hands the socket to {@link RoomManager.open}.
 *
 * It guarantees that a room broadcast cannot silently miss a participant:
 * connections are auto-joined to the user's rooms before `welcome`; every broadcast
 * first reconciles the room with the membership loader; any online participant the room
 * broadcast missed gets the message directly; and each broadcast yields a
 * {@link DeliveryReport}.
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http';
 * import { RoomManager } from 'roomwire';
 * import { attachWebSocket } from 'roomwire/ws';
 *
 * const rooms = new RoomManager({
 *   authenticate: (handshake) => ({ id: new URL(handshake.url, 'http://x').searchParams.get('user') ?? 'anonymous' }),
 *   membership: { roomsOf: () => ['lobby'], membersOf: () => ['alice', 'bob'] },
 * });
 * const server = createServer();
 * attachWebSocket(rooms, { server, path: '/ws' });
 * server.listen(8080);
 * await rooms.broadcast('lobby', { text: 'hello' });
 * ```
 */
export class RoomManager extends EventEmitter<RoomManagerEvents> {
  private readonly options: ResolvedOptions;
  private readonly logger: Logger;
  /** False with the silent default, so the hot path builds no log strings. */
  private readonly logging: boolean;
  private readonly history: HistoryStore;
  private readonly membership: MembershipCache;
  /** Only the ack of each cid is kept, never its data: the window may hold many messages. */
  private readonly dedupe: DedupeWindow<Promise<{ id: string; seq: number }>>;
  /** Outcomes in `dedupe` that wait for the copy of a publish the backplane did not confirm. */
  private readonly unconfirmed = new WeakSet<Promise<{ id: string; seq: number }>>();
  private readonly nextId = createIdGenerator();
  private readonly users = new Map<string, UserState>();
  private readonly conns = new Map<string, ConnState>();
  private readonly rooms = new Map<string, RoomState>();
  private messageCount = 0;
  /**
   * Bumped whenever a connection opens, closes, enters or leaves a room: a broadcast
   * reconciles its room again only when this or the room's participants changed.
   */
  private topology = 0;
  private closing: Promise<void> | undefined;
  /** Set once `close()` has closed the connections: from then on `broadcast()` is refused. */
  private shutDown = false;
  private drained: (() => void) | undefined;
  /** Client frames accepted and not yet handled, on every connection (their `inflight` summed). */
  private inflightFrames = 0;
  /** Set by `close()` while it waits for `inflightFrames` to reach 0. */
  private settled: (() => void) | undefined;
  /** Set with the `backplane` option; every cluster path branches on it once. */
  private readonly backplane: Backplane | undefined;
  /** The backplane's start; awaited before the first subscribe or publish. */
  private readonly started: Promise<void> | undefined;
  private readonly feeds = new Map<string, RoomFeed>();
  /**
   * Seqs of this process's broadcasts into rooms it had no feed for, published and waiting
   * for their room task to deliver them directly, by room: a feed opened meanwhile starts
   * before them (see `deliverClustered`). Entries live only while they wait.
   */
  private readonly directs = new Map<string, Set<number>>();
  private readonly waiters = new Map<string, DeliveryWaiter>();
  /**
   * Connections of this process that a broadcast made on another one leaves out
   * (`broadcast()`'s `except`), by message id, until the message is delivered. Usually empty.
   */
  private readonly remoteExcepts = new Map<string, ConnState>();
  /**
   * Rooms a user was added to or removed from (false) while one of their connections was
   * opening: its `roomsOf` answer may predate the change, so auto-join skips a removed
   * room and enters an added one after `welcome`. Entries live only until that
   * connection's auto-join ends; a connection retrying `roomsOf` has one too, for its
   * removals, until the retry has entered its rooms.
   */
  private readonly changedWhileOpening = new Map<ConnState, Map<string, Addition | false>>();
  /**
   * Additions still waiting to put connections in a room (`addMember`, a `participants`
   * notice, a join), by room and user: a `removeMember` meanwhile cancels them. Entries
   * live only while they wait.
   */
  private readonly adding = new Map<string, Adding>();
  /**
   * Connections an addition (`addMember`, here or another process's while this one checks
   * it, a `participants` notice, a publisher found a participant) is putting in a room,
   * waiting for its turn: ensure-participants and the fallback leave them to it, which
   * sends them, in seq order, what was published since the addition. Any other entry
   * that comes first (a join of the connection's own) starts it where the additions do,
   * and they then find it in. Usually empty.
   *
   * The addition's own starting seq does not bound what it owes. It is the seq at the
   * `addMember` call, or, for a `participants` notice, just before the other process's
   * broadcast that found the user; a broadcast this process makes meanwhile may come
   * earlier, to a user who was a participant before it (a change told with `invalidate`),
   * and leave the connection out all the same. So every broadcast that leaves a marked
   * connection out records its seq in the mark (`leftOut`), and the addition starts the
   * connection before the lowest one if that is earlier than its own seq (`entryStart`;
   * the lowest start of all the additions holding the mark, too, `from`).
   * That is sound because everything happens in room order: the broadcasts that leave it
   * out run before the entry's task, which sends `joined` at its start, then the
   * history from there up to what this process has sent, then the live messages. While
   * marked, the connection is outside the room and the fallback skips it: it got none of
   * the messages after its start, and now gets each of them once, in seq order.
   */
  private readonly entering = new Map<ConnState, Map<string, EnteringMark>>();
  /**
   * Another process's `addMember` notices still being checked with the loader, by user: a
   * connection of theirs that is opening waits for them before its welcome, so that the
   * addition is recorded in `changedWhileOpening` in time. Entries live only while they wait.
   */
  private readonly checkingAdds = new Map<string, Set<Promise<void>>>();
  /**
   * Per connection, the first seq the fallback sent it in each room it was not in: what
   * a room membership's `firstSeq` is for connections in the room. Rare, so kept apart,
   * and bounded: the latest `maxRoomsPerConnection` rooms.
   */
  private readonly sentOutsideRoom = new WeakMap<ConnState, Map<string, number>>();
  /**
   * With a backplane: per connection, the rooms its user participates in that it cannot
   * enter, being at `maxRoomsPerConnection`. The fallback sends it their broadcasts, as on
   * one process, but only where the room is received: this process keeps these rooms
   * subscribed while such a connection is open (see `holdOut`). Usually empty.
   */
  private readonly heldOut = new Map<ConnState, Set<string>>();
  /**
   * With presence and a backplane: the rooms of users whose connections here all closed
   * while they stayed online on another process. The `offline` that process announces
   * later goes to these rooms too, as it would to rooms of one process's earlier-closed
   * connections. At most {@link MAX_AWAY_USERS} users, each with at most
   * `maxRoomsPerConnection` rooms.
   */
  private readonly awayRooms = new Map<string, Set<string>>();
  /**
   * The seqs each connection was sent live in its earlier stays in a room it left (or was
   * removed from) and is perhaps in again: a resume does not send them a second time.
   * Rare (a leave after messages came), so kept apart, and bounded.
   */
  private readonly pastStays = new WeakMap<ConnState, Map<string, [first: number, last: number][]>>();
  /**
   * Per room, the participants this process last told the cluster about and the cache
   * stamp they came from: a broadcast announces only participants new since then.
   */
  private readonly told = new Map<string, { stamp: number; users: ReadonlySet<string> }>();
  /** What every connection's handlers call back into: two functions for all connections, not two closures each. */
  private readonly core: ConnectionCore = {
    receive: (conn, data, isBinary) => this.receive(conn, data, isBinary),
    release: (conn, code, reason) => this.release(conn, code, reason),
  };
  /** Publishes may take the synchronous path (`publishNow`): no hook, no backplane, history in memory. */
  private readonly syncPublish: boolean;
  /** Frames whose upper bound of bytes is at most this clear both size limits unmeasured. */
  private readonly smallFrameBytes: number;
  /** The history is roomwire's in-memory one, which keeps broadcast frames as the strings already encoded. */
  private readonly framedHistory: boolean;
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  /** The last epoch over 64 characters and the digest `welcome` announces for it (see `wireEpoch`). */
  private longEpoch: [epoch: string, wire: string] | undefined;
  /** The history's epoch the feeds' seqs belong to; a new one means the numbering restarted. */
  private feedEpoch: string | undefined;

  /** @throws {OptionsError} when an option is missing or of the wrong type. */
  constructor(options: RoomManagerOptions) {
    super();
    this.options = resolveOptions(options);
    this.logger = this.options.logger ? guardedLogger(this.options.logger) : silentLogger;
    this.logging = this.options.logger !== undefined;
    const history = this.options.history;
    this.backplane = this.options.backplane;
    this.history = this.backplane ? this.backplane.history : typeof history === 'number' ? new InMemoryHistoryStore(history) : history;
    this.membership = new MembershipCache(this.options.membership, {
      ttlMs: this.options.membershipTtlMs,
      timeoutMs: this.options.loaderTimeoutMs,
      maxRooms: this.options.membershipCacheSize,
      onError: (room, error) => this.reportError('membersOf', error, { room }),
    });
    this.dedupe = new DedupeWindow(this.options.dedupeWindowMs, Date.now, MAX_DEDUPE_ENTRIES);
    this.framedHistory = this.history.constructor === InMemoryHistoryStore;
    this.syncPublish = !this.backplane && this.options.onPublish === undefined && this.framedHistory;
    this.smallFrameBytes = Math.min(this.options.maxFrameBytes, Math.floor(this.options.maxMessageBytes / DATA_GROWTH));
    if (this.backplane) {
      this.started = this.backplane.start({
        message: (message, except) => this.received(message, except),
        membership: (change) => this.applyChange(change),
        reconnected: () => this.rejoin(),
        error: (error, phase) => this.reportError(`backplane.${phase}`, error, {}),
        presence: (event, users) => this.clusterPresence(event, users),
      });
      // Reported here; whoever awaits it (a connection, a publish) fails on its own.
      this.started.catch((error: unknown) => this.reportError('backplane.start', error, {}));
      this.sweepTimer = setInterval(() => this.sweepFeeds(), FEED_SWEEP_MS);
      this.sweepTimer.unref?.();
    }
  }

  /** The limits transports enforce before the core sees a frame. */
  get limits(): {
    /** Largest frame a client may send, in bytes; a transport closes the connection with 1009 on a larger one. */
    maxFrameBytes: number;
    /**
     * How often a transport checks each connection, in ms (announced in `welcome`): the
     * `ws` adapter pings one it has not heard from since its last check, and terminates
     * one that left a ping unanswered for two checks.
     */
    heartbeatMs: number;
  } {
    return { maxFrameBytes: this.options.maxFrameBytes, heartbeatMs: this.options.heartbeatMs };
  }

  /** True once {@link RoomManager.close} was called. */
  get isClosing(): boolean {
    return this.closing !== undefined;
  }

  // ---------------------------------------------------------------- connections

  /**
   * Authenticates an upgrade. Resolves with the principal, or rejects with a
   * {@link HandshakeError} whose `status` (401 or 403) the transport answers with before
   * any WebSocket exists.
   */
  async authenticate(handshake: Handshake): Promise<Principal> {
    if (this.closing) throw HandshakeError.forbidden('server shutting down');
    let principal: Principal;
    try {
      // A hung authenticator must not hold the upgrade's socket open forever.
      principal = await withTimeout(
        Promise.resolve().then(() => this.options.authenticate(handshake)),
        this.options.authTimeoutMs,
        'authenticate',
      );
    } catch (error) {
      if (isHandshakeError(error)) throw error;
      this.reportError('authenticate', error, {});
      throw HandshakeError.unauthorized(error instanceof TimeoutError ? 'authentication timed out' : 'authentication failed', { cause: error });
    }
    if (typeof principal !== 'object' || principal === null || typeof principal.id !== 'string' || principal.id === '') {
      const error = new TypeError('authenticator must return a principal with a non-empty string id');
      this.reportError('authenticate', error, {});
      throw HandshakeError.unauthorized('authentication failed', { cause: error });
    }
    if (principal.expiresAt !== undefined && (typeof principal.expiresAt !== 'number' || Number.isNaN(principal.expiresAt))) {
      // NaN (an expiry the authenticator failed to read) compares false with every time:
      // the connection would never be closed, and its expiry timer would re-arm every 1 ms.
      const error = new TypeError('authenticator must return a principal whose expiresAt, when set, is a time in ms');
      this.reportError('authenticate', error, {});
      throw HandshakeError.unauthorized('authentication failed', { cause: error });
    }
    if (principal.expiresAt !== undefined && principal.expiresAt <= Date.now()) {
      throw HandshakeError.unauthorized('credentials expired');
    }
    this.assertCanOpen(principal);
    return principal;
  }

  /**
   * Throws a 403 {@link HandshakeError} when the principal may not open one more
   * connection now (its user is at `maxConnectionsPerUser`, or the manager is closing).
   * `authenticate` checks it; a transport checks it again synchronously right before it
   * completes the upgrade and calls `open`, so concurrent upgrades cannot overshoot.
   */
  assertCanOpen(principal: Principal): void {
    if (this.closing) throw HandshakeError.forbidden('server shutting down');
    const user = this.users.get(principal.id);
    if (user && user.conns.size >= this.options.maxConnectionsPerUser) {
      throw HandshakeError.forbidden(`too many connections for this user (at most ${this.options.maxConnectionsPerUser})`);
    }
  }

  /**
   * Opens a connection for an authenticated principal: auto-joins it to every room of
   * `roomsOf(user)`, then sends `welcome`. Returns the callbacks the transport calls for
   * each received frame and on close.
   */
  open(socket: Connection, principal: Principal): ConnectionHandlers {
    const id = this.nextId();
    if (this.closing) {
      safeClose(socket, CloseCode.GoingAway, 'server shutting down');
      return { id, message: noop, closed: noop, ready: Promise.resolve() };
    }
    let user = this.users.get(principal.id);
    if (!user) {
      user = { id: principal.id, idJson: JSON.stringify(principal.id), principal, conns: new SmallSet(), open: 0, offlineRooms: undefined };
      this.users.set(user.id, user);
    }
    user.principal = principal;
    const conn: ConnState = {
      id,
      user,
      principal,
      socket,
      rooms: new SmallMap(),
      left: NO_ROOMS,
      state: 'opening',
      early: undefined,
      queue: undefined,
      inflight: 0,
      publishBucket: undefined,
      joinBucket: undefined,
      strikes: undefined,
      lastFailedId: '',
      openedAt: Date.now(),
      expiryTimer: undefined,
    };
    user.conns.add(conn);
    this.conns.set(id, conn);
    const ready = this.autoJoin(conn).catch((error: unknown) => {
      this.reportError('open', error, { connectionId: id, user: principal.id });
      safeClose(socket, CloseCode.InternalError, 'internal error');
    });
    return new OpenConnection(this.core, conn, ready);
  }

  private async autoJoin(conn: ConnState): Promise<void> {
    let rooms: string[] = [];
    let loaded = false;
    try {
      const answer = await withTimeout(
        Promise.resolve().then(() => this.options.membership.roomsOf(conn.principal)),
        this.options.loaderTimeoutMs,
        'roomsOf',
      );
      rooms = [...toStringSet(answer)];
      loaded = true;
    } catch (error) {
      // The user is still served: ensure-participants repairs membership on the next
      // broadcast (on this process; with a backplane, the connection retries below).
      this.reportError('roomsOf', error, { connectionId: conn.id, user: conn.user.id });
    }
    if (conn.state === 'closed') {
      this.changedWhileOpening.delete(conn);
      return;
    }
    const wanted: string[] = [];
    // With a backplane, the rooms past the limit: the fallback reaches the connection there
    // from this process, which receives them for it (see heldOut).
    const beyond: string[] = [];
    for (const room of rooms) {
      if (!isRoomName(room)) {
        this.logger.warn({ user: conn.user.id, room: String(room).slice(0, 300) }, 'roomsOf returned an invalid room name; skipped');
        continue;
      }
      if (wanted.length >= this.options.maxRoomsPerConnection) {
        if (beyond.length === 0) {
          this.logger.warn(
            { user: conn.user.id, rooms: rooms.length, limit: this.options.maxRoomsPerConnection },
            `user ${conn.user.id} has more rooms than maxRoomsPerConnection; auto-joined the first ${wanted.length}`,
          );
        }
        if (!this.backplane) break;
        beyond.push(room);
        continue;
      }
      wanted.push(room);
    }
    if (this.backplane) {
      // Subscribed before welcome: a message published anywhere after welcome reaches it.
      await this.started;
      await Promise.all([...wanted, ...beyond].map((room) => this.openFeed(room)));
      // It may have closed while the subscriptions were made.
      if ((conn.state as ConnState['state']) === 'closed') {
        this.changedWhileOpening.delete(conn);
        return;
      }
      if (!loaded) this.retryRoomsOf(conn, 1);
    }
    // Where each room stands, read before the joins so that nothing can be sent to the
    // connection before welcome. A synchronous store answers in the same tick as the joins;
    // an asynchronous one may answer a seq slightly behind, and a resume from it replays
    // exactly what the client missed.
    const seqs: Record<string, number> = Object.create(null) as Record<string, number>;
    // An addMember announced by another process before welcome is owed to the connection:
    // its check with the loader is awaited, or the room's seq read below would count the
    // messages published since that addMember as seen.
    for (let checks = this.checkingAdds.get(conn.user.id); checks; checks = this.checkingAdds.get(conn.user.id)) await Promise.all(checks);
    for (const room of wanted) {
      const latest = this.roomSeq(room);
      seqs[room] = latest instanceof Promise ? await latest : latest;
    }
    const changed = this.changedWhileOpening.get(conn);
    this.changedWhileOpening.delete(conn);
    if ((conn.state as ConnState['state']) === 'closed') return;
    const joined: string[] = [];
    const entered: string[] = [];
    for (const room of wanted) {
      const change = changed?.get(room);
      // An addMember made while roomsOf answered may be older than the room's seq now: a
      // message since it is owed to the connection, and welcome.seqs would count it as seen.
      // Entered after welcome instead (below), from where the addition stood.
      const owed = change !== undefined && change !== false && !(typeof change.from === 'number' && change.from >= seqs[room]!);
      if (change === false || owed) {
        // welcome.seqs speaks of the rooms welcome lists only.
        delete seqs[room];
        continue;
      }
      if (!conn.rooms.has(room)) {
        // The `join` events wait for welcome: a listener that broadcasts into the room (a
        // "someone is here" message) would otherwise send it before welcome.
        this.addToRoom(conn, room, 'member', 'auto', false);
        entered.push(room);
      }
      joined.push(room);
    }
    // A room added or removed meanwhile is left to that change (an addition sends what followed it).
    for (const room of beyond) if (changed?.get(room) === undefined) this.holdOut(conn, room);
    conn.state = 'open';
    // The rooms an offline goes to should this process crash: where this online goes.
    const crossed = this.backplane?.presence.track(conn.user.id, 1, this.options.presence ? conn.rooms.keyList() : undefined);
    conn.user.open++;
    this.topology++;
    this.send(conn, {
      type: 'welcome',
      protocol: PROTOCOL_VERSION,
      connectionId: conn.id,
      user: { id: conn.user.id },
      ...(this.history.epoch === undefined ? {} : { epoch: this.wireEpoch(this.history.epoch) }),
      rooms: joined,
      seqs,
      heartbeatMs: this.options.heartbeatMs,
    });
    if (this.logging) {
      this.logger.info({ user: conn.user.id, connectionId: conn.id, rooms: joined.length }, `user ${conn.user.id} auto-joined to ${joined.length} rooms`);
    }
    // Added while roomsOf answered or the rooms were subscribed: entered next, each told with
    // `joined`, as addMember does for an open connection. Started before any listener runs,
    // so a broadcast a listener makes leaves the connection to it (see `entering`).
    for (const [room, addition] of changed ?? []) {
      if (!addition || conn.rooms.has(room)) continue;
      this.bringIn(conn.user, room, addition).catch((error: unknown) => this.reportError('addMember', error, { connectionId: conn.id, user: conn.user.id, room }));
    }
    for (const room of entered) {
      if ((conn.state as ConnState['state']) === 'closed') break;
      if (conn.rooms.has(room)) this.notify('join', { connectionId: conn.id, user: conn.user.id, room, reason: 'auto' });
    }
    this.notify('connect', { connectionId: conn.id, user: conn.user.id, rooms: joined });
    if (this.options.presence) this.afterPresenceChange(conn.user.id, 'online', conn.rooms.keyList(), crossed ?? conn.user.open === 1);
    this.armExpiry(conn);
    const early = conn.early;
    conn.early = undefined;
    if (early) {
      for (const entry of early.frames) {
        if (Array.isArray(entry)) this.receive(conn, entry[0], entry[1]);
        // At once when nothing is pending, as a pong is: queued, it would fall behind later frames answered at once.
        else if (conn.queue === undefined) this.sendError(conn, 'rate_limited', 'too many frames before welcome', { ref: entry.refused });
        else this.inFrameOrder(conn, () => void this.sendError(conn, 'rate_limited', 'too many frames before welcome', { ref: entry.refused }));
      }
    }
  }

  /**
   * Backplane mode: `roomsOf` failed at connect. Ensure-participants on a broadcast only
   * repairs connections of the process that broadcasts, so this connection asks again,
   * with backoff, and enters its rooms (each told with `joined`) once the loader answers.
   */
  private retryRoomsOf(conn: ConnState, attempt: number): void {
    if (attempt >= ROOMS_OF_ATTEMPTS) return;
    const timer = setTimeout(() => {
      void (async () => {
        if (conn.state === 'closed' || this.closing) return;
        // The answer may predate a removal made while it comes, as at connect: kept until
        // the last room is entered (see changedWhileOpening).
        const changed = new Map<string, Addition | false>();
        this.changedWhileOpening.set(conn, changed);
        try {
          let rooms: Set<string>;
          try {
            rooms = toStringSet(
              await withTimeout(
                Promise.resolve().then(() => this.options.membership.roomsOf(conn.principal)),
                this.options.loaderTimeoutMs,
                'roomsOf',
              ),
            );
          } catch (error) {
            this.reportError('roomsOf', error, { connectionId: conn.id, user: conn.user.id });
            this.retryRoomsOf(conn, attempt + 1);
            return;
          }
          for (const room of rooms) {
            if (!isRoomName(room) || conn.rooms.has(room) || conn.left.has(room) || changed.get(room) === false) continue;
            // Past its limit, reached by the fallback from this process (see heldOut).
            if (conn.rooms.size >= this.options.maxRoomsPerConnection) this.holdOut(conn, room);
            else await this.enterRoom(conn, room, 'member', 'auto', undefined);
          }
        } finally {
          if (this.changedWhileOpening.get(conn) === changed) this.changedWhileOpening.delete(conn);
        }
      })().catch((error: unknown) => this.reportError('roomsOf', error, { connectionId: conn.id, user: conn.user.id }));
    }, ROOMS_OF_BACKOFF_MS * 2 ** (attempt - 1));
    timer.unref?.();
  }

  /**
   * Puts a connection in a room in room order and tells it with `joined` carrying the
   * seq the live messages continue from. With a backplane, subscribes the room first.
   * `from`: the room's seq when its user was found a participant; the connection is sent
   * the messages after it, as an `addMember`'s are.
   */
  private async enterRoom(
    conn: ConnState,
    room: string,
    mode: Membership['mode'],
    reason: JoinReason,
    ref: string | undefined,
    from?: MaybePromise<number | undefined>,
  ): Promise<boolean> {
    const adding = this.beginAdding(room, conn.user.id);
    // Sent what it missed from `from` on, in order: the broadcasts meanwhile leave it to this.
    if (from !== undefined) this.markEntering([conn], room, true, from);
    try {
      if (this.backplane) await this.openFeed(room);
      return await this.inRoomOrder(room, async () => {
        const since = from === undefined ? undefined : await from;
        if (conn.state === 'closed') return false;
        if (conn.rooms.has(room)) {
          if (reason !== 'join') return true;
        } else {
          // A `removeMember` made while this waited (a join subscribing the room) stands.
          if (adding.cancelled) return false;
          // A `leave` handled while this waited (a retried auto-join subscribing the room)
          // stands: only a join puts back a connection that left.
          if (reason !== 'join' && reason !== 'server' && conn.left.has(room)) return false;
          // Rooms entered meanwhile (addMember, ensure-participants) may have reached the limit.
          if (conn.rooms.size >= this.options.maxRoomsPerConnection) return false;
          // Marked as entering (its own `from`, or another addition waiting: a join made as
          // another process's addMember is checked), it is owed the messages from where
          // the additions start, and was perhaps left out of broadcasts meanwhile.
          if (from !== undefined || this.isEntering(conn, room)) return this.enterSince(conn, room, mode, reason, ref, adding, since);
          this.addToRoom(conn, room, mode, reason);
        }
        return this.sendJoined(conn, room, ref);
      });
    } finally {
      this.endAdding(adding);
      if (from !== undefined) this.markEntering([conn], room, false);
    }
  }

  /** Puts `conn` in `room`, with the messages after `from` (see `entryStart`), answering `ref`; inside a room-order task. */
  private async enterSince(
    conn: ConnState,
    room: string,
    mode: Membership['mode'],
    reason: JoinReason,
    ref: string | undefined,
    adding: Adding,
    from: number | undefined,
  ): Promise<boolean> {
    const { seq, missed } = await this.missedSince(room, this.entryStart(conn, room, from));
    // Checked again after the reads: a removal, a leave or a close may have come meanwhile.
    if (conn.rooms.has(room)) return reason === 'join' ? this.sendJoined(conn, room, ref) : true;
    if (conn.state === 'closed' || adding.cancelled || conn.rooms.size >= this.options.maxRoomsPerConnection) return false;
    if (reason !== 'join' && reason !== 'server' && conn.left.has(room)) return false;
    this.enterWith(conn, room, reason, seq, missed, mode, ref);
    return true;
  }

  /**
   * Tells a connection in `room` so, with the seq its live messages continue from; inside
   * a room-order task. False, sending nothing, when it is not in the room by then (taken
   * out while the seq was read, by `removeMember` say): `joined` after its `left` would
   * tell the client it is in a room it is not in.
   */
  private async sendJoined(conn: ConnState, room: string, ref: string | undefined): Promise<boolean> {
    const seq = await this.roomSeq(room);
    if (!conn.rooms.has(room)) return false;
    this.send(conn, { type: 'joined', room, seq, ...(ref === undefined ? {} : { ref }) });
    return true;
  }

  /**
   * The seq live messages continue from, read inside a room-order task. With a
   * backplane it is what this process has sent, not the cluster's latest: messages
   * between the two are still on their way here and will be sent live.
   */
  private roomSeq(room: string): MaybePromise<number> {
    const feed = this.backplane ? this.feeds.get(room) : undefined;
    return feed?.active ? feed.sent : this.history.latestSeq(room);
  }

  /**
   * The history's epoch as `welcome` announces it: as it is when `resume` can take it back
   * (at most 64 characters), else a digest of it, so a store of one's own may name its
   * numbering at any length. Kept for the last epoch seen: it changes only on a restart.
   */
  private wireEpoch(epoch: string): string {
    if (epoch.length <= MAX_EPOCH_LENGTH) return epoch;
    if (this.longEpoch?.[0] !== epoch) this.longEpoch = [epoch, `sha256:${createHash('sha256').update(epoch).digest('base64url')}`];
    return this.longEpoch[1];
  }

  private armExpiry(conn: ConnState): void {
    const expiresAt = conn.principal.expiresAt;
    if (expiresAt === undefined || conn.state === 'closed') return;
    const delay = expiresAt - Date.now();
    // Not `delay <= 0`: a NaN expiry (a principal given to open() unchecked) counts as expired.
    if (!(delay > 0)) {
      // Forgotten at once, not when the peer answers the close: a peer that never does keeps
      // its socket until the transport gives up, and nothing it sends meanwhile may be taken
      // on credentials that expired (nor frames it sent before welcome).
      this.drop(conn, CloseCode.PolicyViolation, 'credentials expired');
      return;
    }
    conn.expiryTimer = setTimeout(() => this.armExpiry(conn), Math.min(delay, MAX_TIMER_MS));
    // Not unref'd: Node keeps a timer list alive after clearTimeout of an unref'd timer
    // with a unique duration, one per connection. The socket keeps the process alive anyway.
  }

  private release(conn: ConnState, code: number, reason: string): void {
    if (conn.state === 'closed') return;
    const wasOpen = conn.state === 'open';
    conn.state = 'closed';
    this.topology++;
    conn.early = undefined;
    if (this.changedWhileOpening.size > 0) this.changedWhileOpening.delete(conn);
    if (conn.expiryTimer) clearTimeout(conn.expiryTimer);
    const user = conn.user;
    if (wasOpen) {
      user.open--;
      const crossed = this.backplane?.presence.track(user.id, -1);
      if (this.options.presence) this.afterPresenceChange(user.id, 'offline', this.offlineRoomsOf(conn), crossed ?? user.open === 0);
    }
    for (const room of conn.rooms.keyList()) this.removeFromRoom(conn, room, false, 'server');
    this.heldOut.delete(conn);
    user.conns.delete(conn);
    if (user.conns.size === 0) this.users.delete(user.id);
    this.conns.delete(conn.id);
    if (this.logging) this.logger.debug({ user: user.id, connectionId: conn.id, code, reason }, `connection ${conn.id} of user ${user.id} closed (${code})`);
    // Paired with its `connect`: a connection closed before its welcome raised none.
    if (wasOpen) this.notify('disconnect', { connectionId: conn.id, user: user.id, code, reason });
    if (this.conns.size === 0) this.drained?.();
  }

  // ---------------------------------------------------------------- frames

  private receive(conn: ConnState, data: string | Uint8Array, isBinary: boolean): void {
    if (conn.state === 'closed') return;
    // The frame's UTF-8 bytes; for a short string, an upper bound (3 per UTF-16 unit) that
    // clears both limits without a scan.
    const bound = typeof data === 'string' ? data.length * 3 : data.byteLength;
    const size = bound <= this.smallFrameBytes ? bound : byteLength(data);
    if (size > this.options.maxFrameBytes) {
      safeClose(conn.socket, CloseCode.MessageTooBig, 'frame too large');
      return;
    }
    if (conn.state === 'opening') {
      this.keepEarly(conn, data, isBinary, size);
      return;
    }
    const decoded = decodeClientFrame(data, isBinary);
    if (!decoded.ok) {
      const { code, message, ref, details } = decoded.error;
      this.sendError(conn, code, message, { ref, details });
      return;
    }
    const frame = decoded.frame;
    if (frame.type === 'ping') {
      this.send(conn, frame.ref === undefined ? { type: 'pong' } : { type: 'pong', ref: frame.ref });
      return;
    }
    // Shutting down: anything accepted now could be neither delivered nor acknowledged; the
    // client resends it (same cid) after it reconnects elsewhere. Ignored before the rate
    // limit too: a refusal would be an answer, and its strikes could close the connection
    // with 4008 (reconnect later) instead of the 1001 (reconnect now) it is about to get.
    if (this.closing) return;
    if (!this.takeToken(conn, frame.type === 'publish' ? 'publish' : 'join')) {
      this.refuseOverLimit(conn, frame.type === 'publish' ? 'publish' : 'join', frame.ref);
      return;
    }
    if (conn.inflight >= MAX_INFLIGHT_FRAMES) {
      this.sendError(conn, 'rate_limited', 'too many frames waiting; slow down', { ref: frame.ref });
      return;
    }
    if (frame.type === 'publish' && this.syncPublish && this.publishNow(conn, frame, size)) return;
    conn.inflight++;
    this.inflightFrames++;
    const run = (): Promise<void> =>
      this.handle(conn, frame, size).then(
        () => {
          conn.inflight--;
          this.frameDone();
        },
        (error: unknown) => {
          conn.inflight--;
          this.frameDone();
          this.reportError(`frame:${frame.type}`, error, { connectionId: conn.id, user: conn.user.id });
          this.sendError(conn, 'internal', 'internal error', { ref: frame.ref });
        },
      );
    this.inFrameOrder(conn, run);
  }

  private frameDone(): void {
    if (--this.inflightFrames === 0) this.settled?.();
  }

  /** Keeps a frame that arrived before `welcome` for after it (see {@link EarlyFrames}). */
  private keepEarly(conn: ConnState, data: string | Uint8Array, isBinary: boolean, size: number): void {
    const early = (conn.early ??= { frames: [], bytes: 0, refused: 0, closing: false });
    if (early.frames.length - early.refused < MAX_INFLIGHT_FRAMES && early.bytes + size <= this.options.maxFrameBytes) {
      early.frames.push([data, isBinary]);
      early.bytes += size;
      return;
    }
    // Answered after welcome, which is always the first frame a connection gets.
    if (early.refused >= MAX_INFLIGHT_FRAMES) {
      if (!early.closing) {
        // Logged as every other 4008 is, so an operator sees why the client was closed.
        this.logger.warn({ user: conn.user.id, connectionId: conn.id }, `closing connection ${conn.id} of user ${conn.user.id}: too many frames before welcome`);
        safeClose(conn.socket, CloseCode.TooSlow, 'too many frames before welcome');
      }
      early.closing = true;
      return;
    }
    early.refused++;
    const decoded = decodeClientFrame(data, isBinary);
    early.frames.push({ refused: decoded.ok ? decoded.frame.ref : decoded.error.ref });
  }

  /** Runs `task` after the connection's earlier frames are handled (now, if none is pending). */
  private inFrameOrder(conn: ConnState, task: () => Promise<void> | void): void {
    const tail = conn.queue ? conn.queue.then(task) : Promise.resolve(task());
    conn.queue = tail;
    void tail.then(() => {
      if (conn.queue === tail) conn.queue = undefined;
    });
  }

  /** Spends one token of the connection's publish or join limit; true when there is no limit. */
  private takeToken(conn: ConnState, kind: 'publish' | 'join'): boolean {
    if (kind === 'publish') {
      const limit = this.options.publishRate;
      return limit === false || (conn.publishBucket ??= new TokenBucket(limit.burst, limit.perSecond)).take();
    }
    const limit = this.options.joinRate;
    return limit === false || (conn.joinBucket ??= new TokenBucket(limit.burst, limit.perSecond)).take();
  }

  /** Answers `rate_limited`; a connection that keeps at it is closed with 4008. */
  private refuseOverLimit(conn: ConnState, kind: 'publish' | 'join', ref: string | undefined): void {
    const { burst, perSecond } = this.options.rateLimitStrikes;
    if ((conn.strikes ??= new TokenBucket(burst, perSecond)).take()) {
      this.sendError(conn, 'rate_limited', `too many ${kind} frames; slow down`, { ref });
      this.notify('rateLimited', { connectionId: conn.id, user: conn.user.id, kind, closed: false });
      return;
    }
    this.logger.warn({ user: conn.user.id, connectionId: conn.id, kind }, `closing connection ${conn.id} of user ${conn.user.id}: kept exceeding its ${kind} rate limit`);
    this.notify('rateLimited', { connectionId: conn.id, user: conn.user.id, kind, closed: true });
    this.drop(conn, CloseCode.TooSlow, 'rate limit exceeded');
  }

  /** Closes a connection and forgets it at once, without waiting for the close handshake. */
  private drop(conn: ConnState, code: number, reason: string): void {
    safeClose(conn.socket, code, reason);
    this.release(conn, code, reason);
  }

  private handle(conn: ConnState, frame: ClientFrame, size: number): Promise<void> {
    if (conn.state === 'closed') return Promise.resolve();
    switch (frame.type) {
      case 'join':
        return this.handleJoin(conn, frame);
      case 'leave':
        return Promise.resolve(this.handleLeave(conn, frame));
      case 'publish':
        return this.handlePublish(conn, frame, size);
      case 'resume':
        return this.handleResume(conn, frame);
      default:
        return Promise.resolve();
    }
  }

  private async handleJoin(conn: ConnState, frame: JoinFrame): Promise<void> {
    const { room, ref } = frame;
    if (!conn.rooms.has(room)) {
      const overLimit = (): void =>
        this.sendError(conn, 'forbidden', `room limit reached (at most ${this.options.maxRoomsPerConnection} rooms per connection)`, { ref, room });
      if (conn.rooms.size >= this.options.maxRoomsPerConnection) {
        overLimit();
        return;
      }
      // The connection asks to be in the room from now on, not once the loader answered:
      // an addMember or ensure-participants meanwhile puts it in (with what follows) as
      // one that never left, and this join is then answered as a join of a room it is in.
      const hadLeft = conn.left.has(room);
      if (hadLeft) (conn.left as Set<string>).delete(room);
      let mode: Membership['mode'] = 'member';
      if (!(await this.isParticipant(room, conn.user.id))) {
        if (!(await this.canJoin(conn, room))) {
          if (hadLeft && !conn.rooms.has(room)) markLeft(conn, room, this.options.maxRoomsPerConnection);
          this.sendError(conn, 'forbidden', 'not allowed to join this room', { ref, room });
          return;
        }
        mode = 'admitted';
      }
      if (conn.state === 'closed') return;
      if (await this.enterRoom(conn, room, mode, 'join', ref)) return;
      if ((conn.state as ConnState['state']) === 'closed') return;
      // Not joined after all. A join that did not happen does not undo the connection's leave.
      if (hadLeft && !conn.rooms.has(room)) markLeft(conn, room, this.options.maxRoomsPerConnection);
      // The room limit filled while the loader or canJoin answered;
      if (conn.rooms.size >= this.options.maxRoomsPerConnection) overLimit();
      // or the connection was taken out again while its seq was read: decided again, as of now.
      else await this.handleJoin(conn, frame);
      return;
    }
    // In room order, so the seq cannot name a message that has not been sent yet.
    const answered = await this.inRoomOrder(room, () => this.sendJoined(conn, room, ref));
    // Decided again as the join of a room it is not in: admitted, or refused, as of now.
    if (!answered && conn.state !== 'closed') await this.handleJoin(conn, frame);
  }

  private handleLeave(conn: ConnState, frame: LeaveFrame): void {
    const { room, ref } = frame;
    if (conn.rooms.has(room)) this.leaveRoom(conn, room, false, 'leave');
    markLeft(conn, room, this.options.maxRoomsPerConnection);
    this.send(conn, ref === undefined ? { type: 'left', room } : { type: 'left', room, ref });
  }

  private async handlePublish(conn: ConnState, frame: PublishFrame, frameBytes: number): Promise<void> {
    const { room, ref, cid } = frame;
    const key = cid === undefined ? undefined : dedupeKey(conn.user.id, room, cid);
    // A repeat of a publish this user made into the room (its ack was lost) gets that ack,
    // even from a connection no longer in the room: the message was delivered.
    const repeated = key === undefined ? undefined : this.dedupe.get(key);
    if (!repeated && !conn.rooms.has(room) && !(await this.ensurePublisher(conn, room))) {
      const earlier = key === undefined ? undefined : await this.publishedElsewhere(key);
      if (earlier) this.sendAck(conn, room, earlier, ref);
      else this.sendError(conn, 'forbidden', 'not in this room', { ref, room });
      return;
    }
    // Data is measured as JSON, re-encoded: only a frame too large to rule it out is.
    const limit = this.options.maxMessageBytes;
    try {
      if (frameBytes > this.smallFrameBytes && jsonBytes(frame.data) > limit) {
        this.sendError(conn, 'too_large', `message data is over ${limit} bytes`, { ref, room });
        return;
      }
    } catch (error) {
      this.refusePublish(conn, error, ref, room);
      return;
    }
    // A repeat found above is answered as it is: a connection outside the room never starts a publish.
    let accepted = repeated ?? (key === undefined ? undefined : this.dedupe.get(key));
    // An earlier attempt the backplane did not confirm, whose copy is still awaited: the
    // retry is published again at once, as it would be on another process. A backplane
    // that keeps cids (`cids`) answers it with the earlier attempt if that was stored, and
    // skips the earlier attempt if it reaches the backplane later. Waiting out the copy
    // instead would hold this connection's frames for 10 s and then refuse the retry a
    // second time. With an onPublish hook the retry still waits, so the hook does not run twice.
    if (accepted !== undefined && this.unconfirmed.has(accepted) && this.options.onPublish === undefined && this.backplane?.cids !== undefined && conn.rooms.has(room)) {
      accepted = undefined;
    }
    if (!accepted) {
      accepted = this.acceptPublish(conn, frame, key).then(({ id, seq }) => ({ id, seq }));
      if (key !== undefined) this.remember(key, accepted);
    }
    let message: { id: string; seq: number };
    try {
      message = await accepted;
    } catch (error) {
      this.refusePublish(conn, error, ref, room);
      return;
    }
    this.sendAck(conn, room, message, ref);
  }

  /**
   * Keeps a publish's outcome under its cid: a repeat gets the same ack. A refused publish
   * is forgotten, so a retry publishes; an unconfirmed one is remembered until its copy
   * arrives (a retry then gets its ack) or stops being awaited.
   */
  private remember(key: string, outcome: Promise<{ id: string; seq: number }>): void {
    this.dedupe.set(key, outcome);
    outcome.catch((error: unknown) => {
      if (this.dedupe.get(key) !== outcome) return;
      const late = lateCopyOf(error);
      if (late) {
        const copy = late.then(({ id, seq }) => ({ id, seq }));
        this.unconfirmed.add(copy);
        // Once the copy is here the first attempt is known to be delivered: a retry gets
        // its ack as it is, without a second publish (which a backplane that ignores
        // `cid` would deliver again, and one that is down again would refuse).
        copy.then(() => this.unconfirmed.delete(copy), noop);
        this.remember(key, copy);
      } else this.dedupe.delete(key);
    });
  }

  /** The `ack` of an accepted publish; both publish paths answer with it. */
  private sendAck(conn: ConnState, room: string, { id, seq }: { id: string; seq: number }, ref: string | undefined, roomJson = JSON.stringify(room)): void {
    this.sendText(conn, encodeAck(roomJson, id, seq, ref));
  }

  /**
   * The common publish, handled start to end in the tick its frame arrived: no promise,
   * no queued task. Taken when the connection has no earlier frame pending and is in the
   * room, the room has no ordered work pending, its participants are cached, the history
   * is in memory, there is no `onPublish` hook and no backplane (`syncPublish`). For any
   * other publish it returns false having done nothing, and the general path gives the
   * same outcome: the same checks, seq, fan-out, report and ack.
   */
  private publishNow(conn: ConnState, frame: PublishFrame, frameBytes: number): boolean {
    const { room, ref, cid } = frame;
    if (conn.queue !== undefined || frameBytes > this.smallFrameBytes || !conn.rooms.has(room)) return false;
    const state = this.rooms.get(room);
    if (!state || state.tail !== undefined) return false;
    const key = cid === undefined ? undefined : dedupeKey(conn.user.id, room, cid);
    if (key !== undefined && this.dedupe.get(key) !== undefined) return false;
    const snapshot = this.membership.load(room);
    if (snapshot instanceof Promise) return false;
    try {
      const data = this.checkPublishData(frame.data);
      const dataJson = encodeData(data);
      const message = this.history.append({ room, id: this.nextId(), from: conn.user.id, data: data === undefined ? null : data, ts: Date.now() }) as StoredMessage;
      if (key !== undefined) this.dedupe.set(key, Promise.resolve({ id: message.id, seq: message.seq }));
      this.fanOut(message, snapshot, conn, dataJson, state, conn.user.idJson);
      this.sendAck(conn, room, message, ref, state.nameJson);
    } catch (error) {
      this.refusePublish(conn, error, ref, room);
    }
    return true;
  }

  /** Answers a publish that failed: its own code for a `RoomwireError`, else `internal` (and reported). */
  private refusePublish(conn: ConnState, error: unknown, ref: string | undefined, room: string): void {
    // Only the protocol's codes go on the wire: a hook written in JavaScript (or against
    // another copy of roomwire) may throw a RoomwireError of any string code.
    if (isRoomwireError(error) && ERROR_CODES.includes(error.code)) {
      this.sendError(conn, error.code, error.message, { ref, room, details: error.details });
      return;
    }
    this.reportError('publish', error, { connectionId: conn.id, user: conn.user.id, room });
    this.sendError(conn, 'internal', 'publish failed', { ref, room });
  }

  /**
   * The data as `publishSchema` returns it (unchanged without one).
   * @throws {RoomwireError} `bad_request` when the schema refuses it.
   */
  private checkPublishData(data: unknown): unknown {
    const schema = this.options.publishSchema;
    if (!schema) return data;
    const result = schema.safeParse(data);
    if (!result.success) throw new RoomwireError('bad_request', 'publish data is invalid', { details: describeValidationError(result.error) });
    return result.data;
  }

  /**
   * A participant whose auto-join failed (or who became one since, without `addMember`)
   * may still publish: put it in the room first, with the messages published since it was
   * found a participant. A broadcast made meanwhile on another process counts on this one
   * to reach the user, and this connection's `joined` may not count it as seen.
   */
  private async ensurePublisher(conn: ConnState, room: string): Promise<boolean> {
    if (conn.left.has(room) || conn.rooms.size >= this.options.maxRoomsPerConnection) return false;
    const from = this.backplane ? this.seqNow(room) : undefined;
    if (!(await this.isParticipant(room, conn.user.id)) || conn.state === 'closed') return false;
    await this.enterRoom(conn, room, 'member', 'ensure', undefined, from);
    return conn.rooms.has(room);
  }

  /**
   * Validates, runs `onPublish` and delivers a client's publish. In a cluster, a publish
   * with a cid (`key`) is delivered once whichever process its retries reach: the
   * backplane's publish skips a cid already published, and while `onPublish` runs the
   * cid is claimed, so a retry elsewhere waits for this attempt instead of running the
   * hook alongside it.
   */
  private async acceptPublish(conn: ConnState, frame: PublishFrame, key: string | undefined): Promise<{ id: string; seq: number }> {
    let data = this.checkPublishData(frame.data);
    const hook = this.options.onPublish;
    const cids = key === undefined || this.options.dedupeWindowMs <= 0 ? undefined : this.backplane?.cids;
    if (hook && cids && key !== undefined) {
      let earlier: { id: string; seq: number } | undefined;
      try {
        earlier = await this.claimCid(cids, key);
      } catch (error) {
        if (isRoomwireError(error)) throw error;
        // The backplane could not be asked (unreachable, or slow): nothing was published,
        // and the retry the error asks for is safe. Said as for a publish it did not confirm.
        this.reportError('backplane.cids', error, { connectionId: conn.id, user: conn.user.id, room: frame.room });
        throw new RoomwireError(
          'internal',
          'publish not confirmed: the backplane is unavailable or slow, and nothing was published; retry with the same cid to have it delivered once',
          { cause: error },
        );
      }
      if (earlier) return earlier;
    }
    try {
      if (hook) {
        const transformed = await hook({ user: conn.principal, connectionId: conn.id, room: frame.room, data, cid: frame.cid });
        if (transformed !== undefined) data = transformed;
      }
      const { message } = await this.deliver(frame.room, conn.user.id, data, conn, undefined, key);
      return message;
    } catch (error) {
      // Refused: a retry may publish. Unconfirmed: the claim stays until it lapses, since
      // the message may have been published after all.
      if (hook && cids && key !== undefined && !lateCopyOf(error)) {
        cids.release(key).catch((cause: unknown) => this.reportError('backplane.cids', cause, { room: frame.room }));
      }
      throw error;
    }
  }

  /**
   * Claims a publish's cid in the cluster before its `onPublish` runs. Resolves the
   * earlier message when another process published it, `undefined` once this process
   * holds it; waits while another process is publishing it (its claim lapses after
   * {@link CID_CLAIM_MS}, so the wait is bounded).
   */
  /**
   * The first ack of a cid another process of the cluster published, for a repeat from a
   * connection no longer in the room (this process does not know the cid); undefined when
   * no process did, or there is no cluster-wide window to ask.
   */
  private async publishedElsewhere(key: string): Promise<{ id: string; seq: number } | undefined> {
    const cids = this.options.dedupeWindowMs > 0 ? this.backplane?.cids : undefined;
    if (!cids) return undefined;
    try {
      const earlier = await this.claimCid(cids, key);
      if (!earlier) await cids.release(key);
      return earlier;
    } catch {
      // The backplane cannot tell: the repeat is refused as any publish from outside the room.
      return undefined;
    }
  }

  private async claimCid(cids: ClusterCids, key: string): Promise<{ id: string; seq: number } | undefined> {
    const deadline = Date.now() + CID_CLAIM_MS + CID_POLL_MAX_MS;
    for (let pause = 25; ; pause = Math.min(pause * 2, CID_POLL_MAX_MS)) {
      const claim = await cids.claim(key, CID_CLAIM_MS);
      if (claim.state === 'claimed') return undefined;
      if (claim.state === 'published') return { id: claim.id, seq: claim.seq };
      if (this.closing || Date.now() >= deadline) {
        throw new RoomwireError('internal', 'publish not accepted: another server is still handling the same cid; retry with the same cid');
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(1, Math.min(pause, claim.retryMs))));
    }
  }

  private async handleResume(conn: ConnState, frame: ResumeFrame): Promise<void> {
    const { ref } = frame;
    const entries = Object.entries(frame.rooms);
    if (entries.length > this.options.maxRoomsPerConnection) {
      this.sendError(conn, 'bad_request', `resume lists more than ${this.options.maxRoomsPerConnection} rooms`, { ref });
      return;
    }
    const withRef = ref === undefined ? {} : { ref };
    // Seqs from another numbering (a restarted in-memory history) name other messages.
    const epoch = this.history.epoch;
    const otherEpoch = frame.epoch !== undefined && epoch !== undefined && frame.epoch !== this.wireEpoch(epoch);
    // Room names are client strings: a null prototype keeps `__proto__` an ordinary key.
    const answered: Record<string, { replayed: number }> = Object.create(null) as Record<string, { replayed: number }>;
    for (const [room, afterSeq] of entries) {
      if (conn.state === 'closed') return;
      if (!conn.rooms.has(room)) {
        // Reading a room the connection is not in asks the loader: it costs a join token.
        if (!this.takeToken(conn, 'join')) {
          this.sendError(conn, 'rate_limited', 'too many rooms to check; resume them later', { ref, room });
          continue;
        }
        if (!(await this.isParticipant(room, conn.user.id))) {
          this.sendError(conn, 'forbidden', 'not allowed to read this room', { ref, room });
          continue;
        }
      }
      // In room order, so no broadcast interleaves with the replay; messages sent live to
      // this connection since it entered the room are not replayed again.
      await this.inRoomOrder(room, async () => {
        const membership = conn.rooms.get(room);
        // The first seq sent live, in the room or (before it was in it) by the fallback.
        let first = membership && membership.firstSeq > 0 ? membership.firstSeq : undefined;
        const outside = this.sentOutsideRoom.get(conn)?.get(room);
        if (outside !== undefined && (first === undefined || outside < first)) first = outside;
        let until = first === undefined ? undefined : first - 1;
        if (this.backplane && membership) {
          // Messages past what this process has sent are on their way here and go out live.
          const feed = this.feeds.get(room);
          if (feed?.active && (until === undefined || feed.sent < until)) until = feed.sent;
        }
        let messages = otherEpoch && afterSeq > 0 ? null : await this.history.since(room, afterSeq, until);
        // Read access is judged again as the answer goes out, after the last wait: while this
        // waited for its turn or the history, the connection may have been taken out of the
        // room (a server-side leave(), a removal), and told `left`. Out of the room only a
        // participant may still read it; a connection that was in it by admission (canJoin,
        // join()) may not, and its replay would follow that `left`.
        if (!conn.rooms.has(room) && !(await this.isParticipant(room, conn.user.id))) {
          this.sendError(conn, 'forbidden', 'not allowed to read this room', { ref, room });
          return;
        }
        if (messages === null) {
          this.sendError(conn, 'history_gap', 'history no longer reaches back that far; refetch this room', { ref, room });
          return;
        }
        const stays = this.pastStays.get(conn)?.get(room);
        if (stays) messages = messages.filter(({ seq }) => !stays.some(([first, last]) => seq >= first && seq <= last));
        for (const m of messages) {
          this.send(conn, { type: 'message', room, id: m.id, seq: m.seq, from: m.from, data: m.data, ts: m.ts, ...withRef });
        }
        answered[room] = { replayed: messages.length };
      });
    }
    this.send(conn, { type: 'resumed', rooms: answered, ...withRef });
  }

  // ---------------------------------------------------------------- broadcast

  /**
   * Broadcasts `data` into `room` from the server (or on behalf of `from`): gives it the
   * room's next `seq`, keeps it in the history, ensures participants, sends it to every
   * connection in the room and falls back to direct sends for participants the room
   * missed. Use it from HTTP routes that save a message and then push it.
   *
   * While `close()` lets accepted frames finish, the connections are still open and a
   * broadcast reaches them; once it has closed them, a broadcast is refused (nothing is
   * stored or sent): there is nobody left to send it to.
   *
   * @returns the {@link DeliveryReport}.
   * @throws {RoomwireError} `bad_request` for an invalid room name, or for data JSON
   * cannot encode (a `BigInt`, a cycle, nesting too deep), before any seq is taken;
   * `internal` ("room manager closed: nothing was broadcast") once `close()` has closed
   * the connections; with a backplane, `internal` ("publish not confirmed: …") when the
   * backplane did not confirm the publish (the message may still be delivered).
   */
  async broadcast(room: string, data: unknown, options: BroadcastOptions = {}): Promise<DeliveryReport> {
    if (!isRoomName(room)) throw new RoomwireError('bad_request', ROOM_NAME_RULE);
    if (this.shutDown) throw new RoomwireError('internal', 'room manager closed: nothing was broadcast');
    const except = options.except === undefined ? undefined : this.conns.get(options.except);
    // A connection of another process: the id travels with the message, to leave it out there.
    const remote = except === undefined ? options.except : undefined;
    const { report } = await this.deliver(room, options.from ?? null, data, except, remote);
    return report;
  }

  private deliver(
    room: string,
    from: string | null,
    data: unknown,
    except: ConnState | undefined,
    remoteExcept?: string,
    cidKey?: string,
  ): Promise<{ message: StoredMessage; report: DeliveryReport }> {
    let dataJson: string;
    try {
      dataJson = encodeData(data);
    } catch (error) {
      return Promise.reject(error);
    }
    const stored = data === undefined ? null : data;
    // One branch per broadcast: the single-process path below is unchanged.
    if (this.backplane) return this.deliverClustered(this.backplane, room, from, stored, except, remoteExcept, cidKey);
    return this.inRoomOrder(room, async () => {
      const loaded = this.membership.load(room);
      const snapshot = loaded instanceof Promise ? await loaded : loaded;
      const appended = this.history.append({ room, id: this.nextId(), from, data: stored, ts: Date.now() });
      const message = appended instanceof Promise ? await appended : appended;
      return { message, report: this.fanOut(message, snapshot, except, dataJson) };
    });
  }

  /**
   * Backplane mode: the backplane gives the seq, stores and publishes; this process then
   * delivers its copy through the room's sequencer, like every other process. Resolves
   * once the message went out to this process's connections.
   */
  private async deliverClustered(
    backplane: Backplane,
    room: string,
    from: string | null,
    data: unknown,
    except: ConnState | undefined,
    remoteExcept: string | undefined,
    cidKey: string | undefined,
  ): Promise<{ message: StoredMessage; report: DeliveryReport }> {
    const id = this.nextId();
    const windowMs = this.options.dedupeWindowMs;
    const cid = cidKey === undefined || windowMs <= 0 ? undefined : { key: cidKey, windowMs };
    // Registered before publishing: the subscription's copy may arrive before the reply.
    const delivered = new Promise<{ message: StoredMessage; report: DeliveryReport }>((resolve) => {
      this.waiters.set(id, { except, at: Date.now(), message: undefined, resolve });
    });
    let message: StoredMessage;
    try {
      await this.started;
      message = await backplane.publish({ room, id, from, data, ts: Date.now() }, cid, remoteExcept);
      if (message.id !== id) {
        // Its cid was published before, on this or another process: nothing went out now.
        this.waiters.delete(id);
        return { message, report: this.emptyReport(message) };
      }
      const pending = this.waiters.get(id);
      if (pending) pending.message = message;
    } catch (error) {
      this.reportError('backplane.publish', error, { room });
      // Unconfirmed is not failed: the script may have run (Redis slow, or the reply lost
      // with its connection). The waiter stays a while, so a copy that arrives still skips
      // the publisher, and a retry with the same cid gets this message's ack.
      const waiter = this.waiters.get(id);
      const late = new Promise<StoredMessage>((resolve, reject) => {
        const timer = setTimeout(() => {
          if (this.waiters.get(id) === waiter) this.waiters.delete(id);
          reject(error instanceof Error ? error : new Error(String(error)));
        }, UNCONFIRMED_WAIT_MS);
        timer.unref?.();
        void delivered.then(({ message: copy }) => {
          clearTimeout(timer);
          resolve(copy);
        });
      });
      late.catch(noop);
      const refusal = new RoomwireError(
        'internal',
        'publish not confirmed: the backplane is unavailable or slow, and the message may or may not be delivered; retry with the same cid to have it delivered once',
        { cause: error },
      );
      throw Object.assign(refusal, { [kLate]: late });
    }
    const feed = this.feeds.get(room);
    if (feed) {
      this.accept(feed, message);
      return delivered;
    }
    // No local connection receives this room: nothing to order against, deliver here
    // directly (ensure-participants may still add local participants).
    const waiter = this.waiters.get(id);
    if (!waiter) return delivered;
    this.waiters.delete(id);
    let directs = this.directs.get(room);
    if (!directs) this.directs.set(room, (directs = new Set()));
    directs.add(message.seq);
    const direct = await this.inRoomOrder(room, async () => {
      const loaded = this.membership.load(room);
      const snapshot = loaded instanceof Promise ? await loaded : loaded;
      directs.delete(message.seq);
      if (directs.size === 0 && this.directs.get(room) === directs) this.directs.delete(room);
      // A local connection entered the room meanwhile (an earlier direct delivery's
      // ensure-participants, a join, an auto-join), opening its feed: the feed delivers
      // this message in seq order with those published elsewhere, and once. Sent here as
      // well, it would reach the connection again when the feed fetches from its baseline.
      // A feed dropped meanwhile (close(), say) delivers nothing more (see deliverFromFeed):
      // without one here, this task is the only delivery.
      const feed = this.feeds.get(room);
      if (feed) {
        // Still subscribing, its baseline will be the room's latest seq, this message's or
        // later: it starts before this message instead, or the feed would skip it as sent.
        if (!feed.active) feed.startAt = Math.min(feed.startAt ?? message.seq - 1, message.seq - 1);
        this.waiters.set(id, waiter);
        this.accept(feed, message);
        return undefined;
      }
      const report = this.fanOut(message, snapshot, except, encodeData(message.data));
      // Ensure-participants may have brought a connection in, opening the room's feed.
      const opened = this.feeds.get(room);
      if (opened && !opened.active) opened.startAt = Math.min(opened.startAt ?? message.seq, message.seq);
      this.tellParticipants(room, message.seq);
      return { message, report };
    });
    // Not awaited in the room task: the feed's delivery is a room task of its own.
    return direct ?? delivered;
  }

  // ---------------------------------------------------------------- backplane feeds

  /** Subscribes the room (once) and resolves when its sequencer has a baseline. */
  private openFeed(room: string): Promise<void> {
    const existing = this.feeds.get(room);
    if (existing) {
      existing.idleSince = undefined;
      return existing.ready;
    }
    const backplane = this.backplane;
    if (!backplane) return Promise.resolve();
    const feed: RoomFeed = {
      room,
      ready: Promise.resolve(),
      active: false,
      last: 0,
      sent: 0,
      pending: new Map(),
      gapTimer: undefined,
      filling: false,
      wanted: 0,
      startAt: undefined,
      idleSince: undefined,
    };
    this.feeds.set(room, feed);
    feed.ready = (async () => {
      await this.started;
      await backplane.subscribe(room);
      // Read after the subscription is active: every later seq arrives through it.
      const latest = await this.history.latestSeq(room);
      this.feedEpoch ??= this.history.epoch;
      // Opened by a direct delivery: what others published since it, before the
      // subscription was active, is fetched rather than counted as sent. So is a direct
      // broadcast still waiting for its room task, which hands its message to this feed.
      for (const seq of this.directs.get(room) ?? []) feed.startAt = Math.min(feed.startAt ?? seq - 1, seq - 1);
      const baseline = feed.startAt !== undefined && feed.startAt < latest ? feed.startAt : latest;
      feed.last = baseline;
      feed.sent = baseline;
      feed.active = true;
      for (const [seq, message] of feed.pending) {
        if (seq <= baseline) {
          feed.pending.delete(seq);
          this.skipped(message);
        }
      }
      this.drain(feed);
      if (latest > baseline) void this.fill(feed, latest);
    })();
    feed.ready.catch((error: unknown) => {
      // Forgotten, so the next connection entering the room tries again.
      if (this.feeds.get(room) === feed) this.feeds.delete(room);
      this.reportError('backplane.subscribe', error, { room });
    });
    return feed.ready;
  }

  /** A message from the backplane's subscription. */
  private received(message: StoredMessage, except: string | undefined): void {
    const feed = this.feeds.get(message.room);
    if (!feed) return;
    if (except !== undefined) this.noteRemoteExcept(message.id, except);
    this.accept(feed, message);
  }

  /** Remembers that the delivery of message `id` leaves out connection `except`, if it is here. */
  private noteRemoteExcept(id: string, except: string): void {
    const conn = this.conns.get(except);
    if (!conn) return;
    // Taken when the message is delivered or skipped; bounded for those never seen again.
    if (this.remoteExcepts.size >= MAX_REMOTE_EXCEPTS) this.remoteExcepts.delete(this.remoteExcepts.keys().next().value as string);
    this.remoteExcepts.set(id, conn);
  }

  /** The sequencer: deliver in seq order, drop duplicates, hold messages ahead of a gap. */
  private accept(feed: RoomFeed, message: StoredMessage): void {
    if (feed.active && message.seq <= feed.last) {
      this.skipped(message);
      return;
    }
    if (feed.pending.has(message.seq)) return;
    feed.pending.set(message.seq, message);
    if (feed.active) this.drain(feed);
    else if (feed.pending.size > MAX_PENDING) feed.pending.delete(feed.pending.keys().next().value as number);
  }

  private drain(feed: RoomFeed): void {
    // Bounded: every turn takes one message out of `pending`.
    for (;;) {
      const next = feed.pending.get(feed.last + 1);
      if (!next) break;
      feed.pending.delete(next.seq);
      feed.last = next.seq;
      this.deliverLocally(feed, next);
    }
    if (feed.pending.size === 0) {
      clearTimeout(feed.gapTimer);
      feed.gapTimer = undefined;
    } else if (!feed.filling && !feed.gapTimer) {
      // Usually the missing copy is only a moment behind; fetch it if it is not.
      feed.gapTimer = setTimeout(() => void this.fill(feed, undefined), feed.pending.size > MAX_PENDING ? 0 : GAP_WAIT_MS);
      feed.gapTimer.unref?.();
    }
  }

  /** Fetches the messages between `last` and the first held one (or `until`) from the history. */
  private async fill(feed: RoomFeed, until: number | undefined): Promise<boolean> {
    feed.gapTimer = undefined;
    if (feed.filling) {
      // The running fill may stop short of `until` (a reconnect's refill): one more follows it.
      if (until !== undefined && until > feed.wanted) feed.wanted = until;
      return true;
    }
    if (!feed.active || this.feeds.get(feed.room) !== feed) return true;
    feed.filling = true;
    const room = feed.room;
    let ok = true;
    try {
      let target = until ?? 0;
      for (const seq of feed.pending.keys()) if (seq - 1 > target) target = seq - 1;
      if (target > feed.last) {
        const missing = await this.history.since(room, feed.last, target);
        if (missing === null) {
          const latest = await this.history.latestSeq(room);
          if (latest < feed.last) {
            // The shared store lost its data and seqs restarted: follow the new numbering.
            this.reportError('backplane.history', new Error(`room ${room}: seqs restarted at the backplane (latest ${latest}, had ${feed.last})`), { room });
            feed.last = 0;
            for (const seq of feed.pending.keys()) if (seq > latest) feed.pending.delete(seq);
            feed.filling = false;
            return await this.fill(feed, latest);
          }
          // Trimmed from the history: the room's connections here cannot be sent them. They
          // are closed with 1001, so that their resume is answered history_gap (the client
          // tells the app to refetch) instead of the loss going unnoticed.
          let first = target + 1;
          for (const seq of feed.pending.keys()) if (seq < first) first = seq;
          this.reportError('backplane.history', new Error(`room ${room}: messages ${feed.last + 1} to ${first - 1} are no longer in the history`), { room });
          feed.last = first - 1;
          for (const { conn } of this.rooms.get(room)?.members ?? []) safeClose(conn.socket, CloseCode.GoingAway, 'messages lost; reconnect and resume');
        } else {
          for (const message of missing) {
            if (message.seq <= feed.last || feed.pending.has(message.seq)) continue;
            feed.pending.set(message.seq, message);
            // Caught up from the history, a broadcast still leaves out what it left out live.
            if (message.except !== undefined) this.noteRemoteExcept(message.id, message.except);
          }
        }
      }
    } catch (error) {
      // Retried by drain's timer while messages are held (and by refillAll after a reconnect).
      this.reportError('backplane.history', error, { room });
      ok = false;
    } finally {
      feed.filling = false;
    }
    this.drain(feed);
    if (feed.wanted > feed.last) {
      const wanted = feed.wanted;
      feed.wanted = 0;
      return this.fill(feed, wanted);
    }
    feed.wanted = 0;
    return ok;
  }

  /**
   * After a reconnect: what was announced meanwhile never arrived. Removals and additions
   * are found again by forgetting the cached participants (the next broadcast into each
   * room reconciles it with the loader); the other processes are asked to tell their
   * rooms' participants again, for connections here outside a room this process does not
   * receive. Then the messages are refilled.
   */
  private rejoin(): void {
    this.membership.invalidateAll();
    this.announce({ kind: 'rejoined' })?.catch(noop);
    this.refillAll();
  }

  /**
   * After a reconnect: fetch what every subscribed room missed meanwhile. Retried with
   * backoff, since the command connection may come back later than the subscriber, and
   * a quiet room would otherwise only notice its gap with its next message.
   */
  private refillAll(attempt = 1): void {
    const epoch = this.history.epoch;
    if (this.feedEpoch !== undefined && epoch !== undefined && epoch !== this.feedEpoch) {
      this.restartNumbering(epoch);
      return;
    }
    const failed: RoomFeed[] = [];
    const fills = [...this.feeds.values()]
      .filter((feed) => feed.active)
      .map(async (feed) => {
        try {
          // Compared with what was sent before the read: messages that arrive while it is
          // on its way were published after it, and may carry higher seqs than it answers.
          const sent = feed.last;
          const latest = await this.history.latestSeq(feed.room);
          if (this.feeds.get(feed.room) !== feed) return;
          if (latest < sent) {
            // Fewer messages than this process already sent: the numbering restarted,
            // whatever the epoch says (a store without one, or one not re-read yet).
            this.restartNumbering(this.history.epoch ?? 'unknown');
            return;
          }
          if (!(await this.fill(feed, latest))) failed.push(feed);
        } catch (error) {
          failed.push(feed);
          this.reportError('backplane.history', error, { room: feed.room });
        }
      });
    void Promise.all(fills).then(() => {
      if (failed.length === 0 || attempt >= ROOMS_OF_ATTEMPTS || this.closing) return;
      const timer = setTimeout(() => this.refillAll(attempt + 1), ROOMS_OF_BACKOFF_MS * 2 ** (attempt - 1));
      timer.unref?.();
    });
  }

  /**
   * The shared history lost its data (a Redis restarted without persistence) and seqs
   * restarted under a new epoch. Protocol v1 cannot renumber a live connection, and a
   * client would take the new seqs for ones it has seen: every local connection is
   * closed with 1001 so it reconnects, gets the new epoch in `welcome`, and its
   * `resume` answers `history_gap` (refetch from the app) instead of a silent loss.
   */
  private restartNumbering(epoch: string): void {
    this.reportError('backplane.history', new Error(`the backplane's history restarted (epoch ${this.feedEpoch ?? '?'} → ${epoch}); reconnecting every client`), {});
    // Recorded again by the next feed, from the history as it is by then.
    this.feedEpoch = undefined;
    const backplane = this.backplane;
    for (const feed of this.feeds.values()) {
      clearTimeout(feed.gapTimer);
      backplane?.unsubscribe(feed.room).catch((error: unknown) => this.reportError('backplane.unsubscribe', error, { room: feed.room }));
    }
    this.feeds.clear();
    for (const conn of [...this.conns.values()]) safeClose(conn.socket, CloseCode.GoingAway, 'history restarted; reconnect and resume');
  }

  private deliverLocally(feed: RoomFeed, message: StoredMessage): void {
    const waiter = this.waiters.get(message.id);
    if (waiter) this.waiters.delete(message.id);
    const room = message.room;
    // Nothing of the room pending and its participants cached: deliver now, no task.
    if (!this.rooms.get(room)?.tail) {
      const loaded = this.membership.load(room);
      if (!(loaded instanceof Promise)) {
        try {
          this.deliverFromFeed(feed, message, loaded, waiter);
        } catch (error) {
          this.reportError('deliver', error, { room });
        }
        return;
      }
    }
    void this.inRoomOrder(room, async () => {
      const loaded = this.membership.load(room);
      this.deliverFromFeed(feed, message, loaded instanceof Promise ? await loaded : loaded, waiter);
    }).catch((error: unknown) => this.reportError('deliver', error, { room }));
  }

  private deliverFromFeed(feed: RoomFeed, message: StoredMessage, snapshot: MembersSnapshot, waiter: DeliveryWaiter | undefined): void {
    // A feed no longer in `feeds` delivers nothing more: whatever dropped it (close(), a
    // restarted numbering, the idle sweep) ended its turn, and a direct delivery that finds
    // no feed sends its message itself. Delivered here too, a message this feed had already
    // fetched and queued behind that direct delivery's room task would go out twice.
    if (this.feeds.get(feed.room) !== feed) {
      if (this.remoteExcepts.size > 0) this.remoteExcepts.delete(message.id);
      waiter?.resolve({ message, report: this.emptyReport(message) });
      return;
    }
    const report = this.fanOut(message, snapshot, waiter?.except ?? this.takeRemoteExcept(message.id), encodeData(message.data));
    if (message.seq > feed.sent) feed.sent = message.seq;
    if (waiter) {
      this.tellParticipants(message.room, message.seq);
      waiter.resolve({ message, report });
    }
  }

  /** A message this process will not deliver (a duplicate, or older than the baseline). */
  private skipped(message: StoredMessage): void {
    if (this.remoteExcepts.size > 0) this.remoteExcepts.delete(message.id);
    this.releaseWaiter(message.id, message);
  }

  /** The connection here that a broadcast from another process leaves out, if any (see `remoteExcepts`). */
  private takeRemoteExcept(id: string): ConnState | undefined {
    if (this.remoteExcepts.size === 0) return undefined;
    const conn = this.remoteExcepts.get(id);
    if (conn) this.remoteExcepts.delete(id);
    return conn;
  }

  private emptyReport(message: StoredMessage): DeliveryReport {
    const { room, id, seq } = message;
    const participants = this.membership.peek(room)?.size ?? 0;
    return { room, id, seq, participants, online: 0, reached: 0, delivered: 0, viaFallback: 0, failed: 0, slow: 0, added: 0, removed: 0, stale: false };
  }

  /** Unsubscribes rooms that have had no local connection for a while; releases stale waiters. */
  private sweepFeeds(): void {
    const backplane = this.backplane;
    if (!backplane) return;
    const now = Date.now();
    const held = this.heldOut.size > 0 ? this.heldRooms() : undefined;
    for (const feed of [...this.feeds.values()]) {
      if (!feed.active) continue;
      const members = this.rooms.get(feed.room)?.members.size ?? 0;
      if (members > 0 || held?.has(feed.room) === true) {
        feed.idleSince = undefined;
        continue;
      }
      feed.idleSince ??= now;
      if (now - feed.idleSince < FEED_IDLE_MS) continue;
      this.feeds.delete(feed.room);
      clearTimeout(feed.gapTimer);
      backplane.unsubscribe(feed.room).catch((error: unknown) => this.reportError('backplane.unsubscribe', error, { room: feed.room }));
    }
    for (const [id, waiter] of this.waiters) {
      // Accepted cluster-wide but stuck behind a gap the history cannot fill: the
      // publisher still gets its ack (the message is stored), with an empty report.
      if (waiter.message && now - waiter.at >= WAITER_TTL_MS) this.releaseWaiter(id, waiter.message);
    }
  }

  /**
   * The rooms kept subscribed for connections outside them by their room limit (see
   * `heldOut`). Drops what no longer needs it first: a connection that entered the room
   * (the room keeps it), left it, or whose user the cached participants no longer list.
   */
  private heldRooms(): Set<string> {
    const rooms = new Set<string>();
    for (const [conn, held] of this.heldOut) {
      for (const room of held) {
        const users = this.membership.peek(room);
        if (conn.rooms.has(room) || conn.left.has(room) || (users !== undefined && !users.has(conn.user.id))) held.delete(room);
        else rooms.add(room);
      }
      if (held.size === 0) this.heldOut.delete(conn);
    }
    return rooms;
  }

  private releaseWaiter(id: string, message: StoredMessage): void {
    const waiter = this.waiters.get(id);
    if (!waiter) return;
    this.waiters.delete(id);
    waiter.resolve({ message, report: this.emptyReport(message) });
  }

  /** Ensure participants, room broadcast, fallback and report: one synchronous pass. */
  private fanOut(
    message: StoredMessage,
    snapshot: MembersSnapshot,
    except: ConnState | undefined,
    dataJson: string,
    state = this.roomState(message.room),
    fromJson?: string,
  ): DeliveryReport {
    const { room, id, seq } = message;
    // The cache's current set, so an addMember/removeMember made while this broadcast
    // awaited its seq is already honoured.
    const cached = this.membership.cached(room);
    const users = cached?.members ?? snapshot.users;
    let added = 0;
    let removed = 0;
    let survey = state.survey;
    if (users) {
      const stamp = cached ? cached.stamp : -1;
      if (!survey || survey.topology !== this.topology || survey.stamp !== stamp || stamp < 0) {
        [added, removed] = this.reconcile(state, users, seq, except, cached?.since);
        survey = this.surveyRoom(room, users, stamp);
        state.survey = survey;
      }
    }
    if (this.logging) {
      this.logger.debug({ room, id, seq, participants: users?.size ?? 0 }, `broadcasting to room ${room}: ${users?.size ?? 0} participants`);
    }

    const text = encodeMessageFrame(message, dataJson, state.nameJson, fromJson);
    if (this.framedHistory) (this.history as InMemoryHistoryStore).keepEncoded(message, text);
    let delivered = 0;
    let roomFailures = 0;
    let slow = 0;
    // Decide, then write. The first sweep reads each recipient's unsent bytes, the second
    // writes to those under the mark. A small room's broadcast finds these objects out of
    // the CPU's caches: read in one sweep, their cache misses overlap, where each waited
    // for the last between socket writes (docs/benchmarks.md, "Small rooms").
    const maxBuffered = this.options.maxBufferedBytes;
    const recipients: Membership[] = [];
    let tooSlow: ConnState[] | undefined;
    for (const membership of state.members) {
      if (membership.conn === except) continue;
      if (membership.socket.bufferedAmount > maxBuffered) (tooSlow ??= []).push(membership.conn);
      else recipients.push(membership);
    }
    if (seq > state.lastSent) state.lastSent = seq;
    for (const membership of recipients) {
      if (this.write(membership.conn, membership.socket, text, message)) {
        delivered++;
        if (membership.firstSeq === 0) membership.firstSeq = seq;
      } else {
        membership.conn.lastFailedId = id;
        roomFailures++;
      }
    }
    if (tooSlow) {
      for (const conn of tooSlow) this.dropSlow(conn);
      slow = tooSlow.length;
    }

    let online = survey?.online ?? 0;
    let reached = survey?.inRoom ?? 0;
    let viaFallback = 0;
    let failed = 0;
    if (users && (roomFailures > 0 || slow > 0 || (survey?.missing ?? 0) > 0)) {
      // Fallback: every open connection of an online participant that the room broadcast
      // did not reach (a send that threw, a connection that could not be in the room) is
      // sent the message directly, once. Connections that left the room get nothing.
      online = 0;
      reached = 0;
      for (const userId of users) {
        const user = this.users.get(userId);
        if (!user || user.open === 0) continue;
        online++;
        let got = false;
        for (const conn of user.conns) {
          if (conn.state !== 'open') continue;
          if (conn === except || (conn.rooms.has(room) && conn.lastFailedId !== id)) {
            got = true;
            continue;
          }
          if (conn.left.has(room) || this.leftToEntry(conn, room, seq)) continue;
          if (conn.lastFailedId === id) roomFailures--;
          const outcome = this.sendMessage(conn, conn.rooms.get(room), text, message, maxBuffered);
          if (outcome === SENT) {
            delivered++;
            viaFallback++;
            got = true;
          } else if (outcome === SLOW) slow++;
          else failed++;
        }
        if (got) reached++;
      }
    }
    failed += roomFailures;
    this.messageCount++;
    // A copy delivered straight from a room's feed (no room task) to a room with no local
    // connection left: its state was made for this broadcast alone. Kept, it would outlive
    // the feed's unsubscribe, one per room ever visited (a room task's end drops its own).
    if (state.members.size === 0 && state.tail === undefined && this.rooms.get(room) === state) this.rooms.delete(room);

    const report: DeliveryReport = {
      room,
      id,
      seq,
      participants: users?.size ?? 0,
      online,
      reached,
      delivered,
      viaFallback,
      failed,
      slow,
      added,
      removed,
      stale: snapshot.stale,
    };
    if (this.logging) {
      const line = `delivered to ${reached}/${online} online participants of room ${room} (${delivered} connections, ${viaFallback} via fallback, ${failed} failed)`;
      if (failed > 0 || viaFallback > 0 || snapshot.stale) this.logger.warn(report as unknown as Record<string, unknown>, line);
      else this.logger.debug(report as unknown as Record<string, unknown>, line);
    }
    this.notify('message', message);
    this.notify('delivery', report);
    return report;
  }

  /**
   * Ensure participants: adds open connections of participants that are missing (and did
   * not leave) and takes out those whose user is no longer a participant.
   * @returns how many connections were added and removed.
   */
  private reconcile(
    state: RoomState,
    users: ReadonlySet<string>,
    seq: number,
    except: ConnState | undefined,
    since: number | undefined,
  ): [added: number, removed: number] {
    const room = state.name;
    let added = 0;
    let removed = 0;
    for (const userId of users) {
      const user = this.users.get(userId);
      if (!user) continue;
      for (const conn of user.conns) {
        if (conn.state !== 'open' || conn.rooms.has(room) || conn.left.has(room) || this.leftToEntry(conn, room, seq, conn === except)) continue;
        if (conn.rooms.size >= this.options.maxRoomsPerConnection) {
          // The fallback reaches it; in a cluster, only while this process receives the room.
          if (this.backplane) this.holdOut(conn, room);
          continue;
        }
        // Found by participants loaded after an `invalidate` made at `since`: the messages
        // published since then are owed too, and this process may never have had them (it
        // did not receive the room), while the notice of the broadcast elsewhere that found
        // the user first is still on its way. Handed to an entry as such a notice's are,
        // from `since` on. Not one the fallback kept sending what it missed.
        if (since !== undefined && since < seq - 1 && !this.sentOutsideRoom.get(conn)?.has(room)) {
          this.reachLocally(room, [userId], since + 1).catch((error: unknown) => this.reportError('ensure', error, { room }));
          if (this.leftToEntry(conn, room, seq, conn === except)) continue;
        }
        this.addToRoom(conn, room, 'member', 'ensure');
        // Its seq tells the client where the room stands; the message follows.
        this.send(conn, { type: 'joined', room, seq: seq - 1 });
        added++;
      }
    }
    for (const membership of state.members) {
      if (membership.mode === 'member' && !users.has(membership.conn.user.id)) {
        this.removeFromRoom(membership.conn, room, true, 'removed');
        removed++;
      }
    }
    return [added, removed];
  }

  /** Counts what the fallback and the report need to know about the room's participants. */
  private surveyRoom(room: string, users: ReadonlySet<string>, stamp: number): RoomSurvey {
    let online = 0;
    let inRoom = 0;
    let missing = 0;
    for (const userId of users) {
      const user = this.users.get(userId);
      if (!user || user.open === 0) continue;
      online++;
      let any = false;
      for (const conn of user.conns) {
        if (conn.state !== 'open') continue;
        if (conn.rooms.has(room)) any = true;
        else if (!conn.left.has(room)) missing++;
      }
      if (any) inRoom++;
    }
    return { topology: this.topology, stamp, online, inRoom, missing };
  }

  /**
   * Sends one broadcast frame to one connection, for the fallback (the room broadcast
   * makes the same check and write in two sweeps). A connection whose unsent bytes
   * passed the mark is closed with 4008 instead, since growing its buffer further would
   * cost every other connection memory and time.
   */
  private sendMessage(conn: ConnState, membership: Membership | undefined, text: string, message: StoredMessage, maxBuffered: number): SendOutcome {
    if (conn.socket.bufferedAmount > maxBuffered) {
      this.dropSlow(conn);
      return SLOW;
    }
    if (!this.write(conn, conn.socket, text, message)) return FAILED;
    if (membership) {
      if (membership.firstSeq === 0) membership.firstSeq = message.seq;
    } else this.sentOutside(conn, message.room, message.seq);
    return SENT;
  }

  /** Records that `seq` of `room` was sent to `conn` outside the room: a resume must not send it again. */
  private sentOutside(conn: ConnState, room: string, seq: number): void {
    let rooms = this.sentOutsideRoom.get(conn);
    if (!rooms) this.sentOutsideRoom.set(conn, (rooms = new Map()));
    if (!rooms.has(room)) {
      // Bounded as its left rooms are: past that, the oldest is forgotten, and a resume
      // of that room may send a message a second time (the same id), never leave one out.
      if (rooms.size >= this.options.maxRoomsPerConnection) rooms.delete(rooms.keys().next().value as string);
      rooms.set(room, seq);
    }
  }

  /** Writes one broadcast frame; false when the socket is closing, or threw (reported). */
  private write(conn: ConnState, socket: Connection, text: string, message: StoredMessage): boolean {
    try {
      return socket.send(text) !== false;
    } catch (error) {
      this.reportError('send', error, { connectionId: conn.id, user: conn.user.id, room: message.room });
      return false;
    }
  }

  private dropSlow(conn: ConnState): void {
    const bufferedAmount = conn.socket.bufferedAmount;
    this.logger.warn({ user: conn.user.id, connectionId: conn.id, bufferedAmount }, `closing connection ${conn.id} of user ${conn.user.id}: too slow (${bufferedAmount} bytes unsent)`);
    this.notify('slow', { connectionId: conn.id, user: conn.user.id, bufferedAmount });
    this.drop(conn, CloseCode.TooSlow, 'too slow');
  }

  /**
   * Runs `task` after every earlier task of the same room. Keeps a room's broadcasts in
   * `seq` order and stops joins and replays from interleaving with them. The first task of
   * an idle room starts synchronously.
   */
  private inRoomOrder<T>(room: string, task: () => Promise<T>): Promise<T> {
    const state = this.roomState(room);
    const run = state.tail ? state.tail.then(task) : task();
    const tail = run.then(noop, noop);
    state.tail = tail;
    void tail.then(() => {
      if (state.tail !== tail) return;
      state.tail = undefined;
      if (state.members.size === 0 && this.rooms.get(room) === state) this.rooms.delete(room);
    });
    return run;
  }

  // ---------------------------------------------------------------- membership

  private roomState(room: string): RoomState {
    let state = this.rooms.get(room);
    if (!state) {
      state = { name: room, nameJson: JSON.stringify(room), members: new Set(), tail: undefined, survey: undefined, lastSent: 0 };
      this.rooms.set(room, state);
    }
    return state;
  }

  /** `notify` false: the caller emits the `join` event itself, later (auto-join, after welcome). */
  private addToRoom(conn: ConnState, room: string, mode: Membership['mode'], reason: JoinReason, notify = true): void {
    const membership: Membership = { conn, socket: conn.socket, mode, firstSeq: 0 };
    // Ensure-participants enters rooms synchronously; the subscription follows.
    if (this.backplane && !this.feeds.has(room)) void this.openFeed(room).catch(noop);
    conn.rooms.set(room, membership);
    this.roomState(room).members.add(membership);
    this.topology++;
    if (notify) this.notify('join', { connectionId: conn.id, user: conn.user.id, room, reason });
  }

  /**
   * A leave the user is still a participant through (`leave` frame, server-side
   * `leave()`): the room's members saw the user's `online`, so the `offline` goes there too.
   */
  private leaveRoom(conn: ConnState, room: string, notify: boolean, reason: LeaveReason): void {
    this.removeFromRoom(conn, room, notify, reason);
    if (this.options.presence) this.keepOfflineRoom(conn.user, room);
  }

  /** Bounded as a connection's left rooms are: past that, the oldest is forgotten. */
  private keepOfflineRoom(user: UserState, room: string): void {
    const rooms = (user.offlineRooms ??= new Set());
    rooms.delete(room);
    if (rooms.size >= this.options.maxRoomsPerConnection) rooms.delete(rooms.values().next().value as string);
    rooms.add(room);
  }

  private removeFromRoom(conn: ConnState, room: string, notify: boolean, reason: LeaveReason): void {
    const membership = conn.rooms.get(room);
    if (!membership) return;
    conn.rooms.delete(room);
    this.topology++;
    const state = this.rooms.get(room);
    if (state && membership.firstSeq > 0 && conn.state !== 'closed') this.rememberStay(conn, room, membership.firstSeq, state.lastSent);
    if (state) {
      state.members.delete(membership);
      if (state.members.size === 0 && !state.tail) this.rooms.delete(room);
    }
    if (notify) this.send(conn, { type: 'left', room });
    this.notify('leave', { connectionId: conn.id, user: conn.user.id, room, reason });
  }

  /** Records that `conn` was sent seqs `first` to `last` of `room` live (see {@link pastStays}). */
  private rememberStay(conn: ConnState, room: string, first: number, last: number): void {
    let rooms = this.pastStays.get(conn);
    if (!rooms) this.pastStays.set(conn, (rooms = new Map()));
    let stays = rooms.get(room);
    if (!stays) {
      // Past the bound the oldest is forgotten: a resume may then send a message twice
      // (the same id), never leave one out.
      if (rooms.size >= this.options.maxRoomsPerConnection) rooms.delete(rooms.keys().next().value as string);
      rooms.set(room, (stays = []));
    }
    if (stays.length >= MAX_STAYS_PER_ROOM) stays.shift();
    stays.push([first, last]);
  }

  private async isParticipant(room: string, user: string): Promise<boolean> {
    const loaded = this.membership.load(room);
    const snapshot = loaded instanceof Promise ? await loaded : loaded;
    return snapshot.users?.has(user) ?? false;
  }

  private async canJoin(conn: ConnState, room: string): Promise<boolean> {
    const canJoin = this.options.membership.canJoin;
    if (!canJoin) return false;
    try {
      const allowed = await withTimeout(
        Promise.resolve().then(() => canJoin.call(this.options.membership, conn.principal, room)),
        this.options.loaderTimeoutMs,
        'canJoin',
      );
      return allowed === true;
    } catch (error) {
      this.reportError('canJoin', error, { connectionId: conn.id, user: conn.user.id, room });
      return false;
    }
  }

  /**
   * Tells roomwire that `user` now participates in `room` (call it after your database
   * says so). The user's open connections enter the room at once, each told with a
   * `joined` frame, and get the next message without reconnecting. Connections that
   * sent `leave` for the room stay out.
   *
   * @throws {RoomwireError} `bad_request` for an invalid room name. With a backplane,
   * `internal` ("could not tell the other processes about this membership change: …")
   * when the announce failed: this process's connections entered the room all the same
   * (the failure is also an `error` event, phase `backplane.announce`), and the other
   * processes catch up when their cached participants expire. It also rejects with the
   * backplane's error when the room could not be subscribed (no connection entered it here).
   */
  async addMember(room: string, user: string): Promise<void> {
    if (!isRoomName(room)) throw new RoomwireError('bad_request', ROOM_NAME_RULE);
    // The room's latest seq as the user became a participant: their connections, here and
    // on other processes, are sent every message after it, however late they enter the
    // room (still connecting, behind a broadcast that holds the room, or on a process that
    // must subscribe it first), whatever follows this call.
    const from = this.seqNow(room);
    const announced = this.backplane ? Promise.resolve(from).then((seq) => this.announce({ kind: 'add', room, user, seq })) : undefined;
    await this.addLocally(room, user, { from });
    if (announced) await announced;
  }

  /** The history's latest seq of `room`; undefined when it did not answer (reported). */
  private seqNow(room: string): MaybePromise<number | undefined> {
    const failed = (error: unknown): undefined => {
      this.reportError('backplane.history', error, { room });
      return undefined;
    };
    try {
      const latest = this.history.latestSeq(room);
      return latest instanceof Promise ? latest.catch(failed) : latest;
    } catch (error) {
      return failed(error);
    }
  }

  private async addLocally(room: string, user: string, addition: Addition): Promise<void> {
    this.membership.add(room, user);
    const state = this.users.get(user);
    if (!state) return;
    for (const conn of state.conns) if (conn.state === 'opening') this.changeWhileOpening(conn, room, addition);
    await this.bringIn(state, room, addition);
  }

  /**
   * Puts the user's open connections in `room`, each told with `joined`, in room order:
   * those that did not leave it, up to their room limit (past it, with a backplane, they
   * are held outside it and sent the same messages: see `holdOut`). A `removeMember` made
   * while this waits for its turn wins: the user is not put back.
   */
  private async bringIn(user: UserState, room: string, addition: Addition): Promise<void> {
    const eligible = (conn: ConnState): boolean =>
      conn.state === 'open' && !conn.rooms.has(room) && !conn.left.has(room) && this.mayReach(conn, room);
    const entering = [...user.conns].filter(eligible);
    if (entering.length === 0) return;
    const adding = this.beginAdding(room, user.id);
    // Without a seq to start from, the fallback reaches them until they are in.
    if (addition.from !== undefined) this.markEntering(entering, room, true, addition.from);
    try {
      if (this.backplane) await this.openFeed(room);
      await this.inRoomOrder(room, async () => {
        if (adding.cancelled || ![...user.conns].some(eligible)) return;
        const from = await addition.from;
        const read = await this.missedSince(room, this.lowestStart([...user.conns].filter(eligible), room, from));
        // Checked again after the reads: a removal, a leave or a close may have come meanwhile.
        for (const conn of user.conns) {
          if (adding.cancelled || !eligible(conn)) continue;
          const { seq, missed } = narrowMissed(read, this.entryStart(conn, room, from));
          this.enterOrHold(conn, room, 'member', seq, missed);
        }
      });
    } finally {
      this.endAdding(adding);
      if (addition.from !== undefined) this.markEntering(entering, room, false);
    }
  }

  /**
   * Marks (or clears) connections an addition is putting in `room` (see {@link entering});
   * one clear per mark. `from`: the seq the addition starts after, when already known.
   */
  private markEntering(conns: readonly ConnState[], room: string, on: boolean, from?: MaybePromise<number | undefined>): void {
    const after = typeof from === 'number' ? from : Number.POSITIVE_INFINITY;
    for (const conn of conns) {
      let rooms = this.entering.get(conn);
      const mark = rooms?.get(room);
      if (on) {
        if (mark) {
          mark.holders++;
          if (after < mark.from) mark.from = after;
        } else {
          if (!rooms) this.entering.set(conn, (rooms = new Map()));
          rooms.set(room, { holders: 1, from: after, leftOut: Number.POSITIVE_INFINITY, excepted: undefined });
        }
      } else if (rooms && mark && --mark.holders === 0) {
        rooms.delete(room);
        if (rooms.size === 0) this.entering.delete(conn);
      }
    }
  }

  /**
   * True when an addition is putting `conn` in `room`: the broadcast of `seq` leaves the
   * connection to it, and the addition sends it this message too (see {@link entering}),
   * unless the connection is the one the broadcast leaves out (`excepted`).
   */
  private leftToEntry(conn: ConnState, room: string, seq: number, excepted = false): boolean {
    if (this.entering.size === 0) return false;
    const mark = this.entering.get(conn)?.get(room);
    if (!mark) return false;
    if (excepted) (mark.excepted ??= new Set()).add(seq);
    else if (seq < mark.leftOut) mark.leftOut = seq;
    return true;
  }

  /**
   * The seq after which an entry sends `conn` the messages of `room`, inside the entry's
   * room-order task: its own `after` (undefined: what was sent), or, if earlier, where
   * another addition putting the connection in starts, or the one before the first
   * broadcast that left the connection to them (see {@link entering}). Whichever entry
   * comes first owes what they all do.
   */
  private entryStart(conn: ConnState, room: string, after: number | undefined): number | undefined {
    const mark = this.entering.get(conn)?.get(room);
    if (!mark) return after;
    const start = Math.min(mark.from, mark.leftOut - 1);
    if (start === Number.POSITIVE_INFINITY) return after;
    return after === undefined ? start : Math.min(after, start);
  }

  /** True when an addition is putting `conn` in `room` (see {@link entering}). */
  private isEntering(conn: ConnState, room: string): boolean {
    return this.entering.size > 0 && this.entering.get(conn)?.has(room) === true;
  }

  /** The earliest {@link entryStart} of `conns`: one history read serves them all (see {@link narrowMissed}). */
  private lowestStart(conns: readonly ConnState[], room: string, after: number | undefined): number | undefined {
    let lowest = after;
    for (const conn of conns) {
      const start = this.entryStart(conn, room, after);
      if (start !== undefined && (lowest === undefined || start < lowest)) lowest = start;
    }
    return lowest;
  }

  /**
   * The messages of `room` after `after` up to what this process has sent live, for
   * connections entering it late, and the seq their `joined` says: `after` (at most what
   * was sent; undefined: what was sent), or what was sent when the history no longer
   * reaches back that far (reported).
   */
  private async missedSince(room: string, after: number | undefined): Promise<MissedRead> {
    const sent = await this.roomSeq(room);
    const from = after === undefined ? sent : Math.min(after, sent);
    const missed = sent > from ? await this.history.since(room, from, sent) : [];
    if (missed !== null) return { seq: from, missed, sent };
    this.reportError('ensure', new Error(`room ${room}: messages after ${from} are no longer in the history`), { room });
    return { seq: sent, missed: [], sent };
  }

  /** Puts `conn` in `room`, tells it with `joined` at `seq` and sends it `missed`, the messages after it, as sent live. */
  private enterWith(
    conn: ConnState,
    room: string,
    reason: JoinReason,
    seq: number,
    missed: readonly StoredMessage[],
    mode: Membership['mode'] = 'member',
    ref?: string,
  ): void {
    this.addToRoom(conn, room, mode, reason);
    this.send(conn, { type: 'joined', room, seq, ...(ref === undefined ? {} : { ref }) });
    // As sent live, so without a broadcast's excepted connection (one of this process
    // leaves its mark a note instead: the history does not name it).
    const excepted = this.entering.get(conn)?.get(room)?.excepted;
    for (const m of missed) {
      if (m.except !== conn.id && !excepted?.has(m.seq)) this.send(conn, { type: 'message', room, id: m.id, seq: m.seq, from: m.from, data: m.data, ts: m.ts });
    }
    // Sent live: a resume must not send them again (nor one after a leave).
    const membership = conn.rooms.get(room);
    if (missed.length > 0 && membership && membership.firstSeq === 0) {
      membership.firstSeq = missed[0]!.seq;
      const state = this.rooms.get(room);
      if (state && missed.at(-1)!.seq > state.lastSent) state.lastSent = missed.at(-1)!.seq;
    }
  }

  /**
   * Whether an addition (`addMember`, a `participants` notice) has to reach `conn`, which
   * is outside `room`: by putting it in, below its room limit, or, with a backplane, past
   * it, by holding it outside (see {@link heldOut}). A connection already held outside is
   * reached by the fallback, and put in by ensure-participants once it has room.
   */
  private mayReach(conn: ConnState, room: string): boolean {
    if (conn.rooms.size < this.options.maxRoomsPerConnection) return !this.isHeldOut(conn, room);
    return this.backplane !== undefined && !this.isHeldOut(conn, room);
  }

  private isHeldOut(conn: ConnState, room: string): boolean {
    return this.heldOut.size > 0 && this.heldOut.get(conn)?.has(room) === true;
  }

  /** `enterWith`, or for a connection at its room limit `holdOutWith`: what an addition reaching it ends with. */
  private enterOrHold(conn: ConnState, room: string, reason: JoinReason, seq: number, missed: readonly StoredMessage[]): void {
    if (conn.rooms.size < this.options.maxRoomsPerConnection) this.enterWith(conn, room, reason, seq, missed);
    else this.holdOutWith(conn, room, missed);
  }

  /**
   * Backplane mode: `conn`'s user participates in `room`, which the connection cannot
   * enter (its room limit). The fallback sends it the room's broadcasts, as on one
   * process, from the copies this process receives: the room stays subscribed here until
   * the connection closes, enters or leaves the room, or its user stops participating
   * (see `heldRooms`).
   */
  private holdOut(conn: ConnState, room: string): void {
    if (conn.state === 'closed') return;
    let rooms = this.heldOut.get(conn);
    if (!rooms) this.heldOut.set(conn, (rooms = new Set()));
    rooms.add(room);
    if (!this.feeds.has(room)) void this.openFeed(room).catch(noop);
  }

  /** Holds `conn` outside `room` (see `holdOut`) and sends it `missed`, as the fallback would have. */
  private holdOutWith(conn: ConnState, room: string, missed: readonly StoredMessage[]): void {
    this.holdOut(conn, room);
    // As sent live, so without a broadcast's excepted connection.
    for (const m of missed) if (m.except !== conn.id) this.send(conn, { type: 'message', room, id: m.id, seq: m.seq, from: m.from, data: m.data, ts: m.ts });
    if (missed.length > 0) this.sentOutside(conn, room, missed[0]!.seq);
  }

  /** Registers an addition of `user` to `room` that waits for its turn (see {@link adding}); end it with `endAdding`. */
  private beginAdding(room: string, user: string): Adding {
    const key = addingKey(room, user);
    let adding = this.adding.get(key);
    if (!adding) this.adding.set(key, (adding = { key, cancelled: false, waiting: 0 }));
    adding.waiting++;
    return adding;
  }

  private endAdding(adding: Adding): void {
    if (--adding.waiting === 0 && this.adding.get(adding.key) === adding) this.adding.delete(adding.key);
  }

  /**
   * Tells roomwire that `user` no longer participates in `room`. Their connections leave
   * the room at once (admitted ones too), each told with a `left` frame, and receive
   * nothing published there afterwards.
   *
   * @returns a promise that never rejects. Without a backplane the removal is complete
   * when this returns. With one, await it before publishing from elsewhere: it resolves
   * once the other processes were told (a failure is an `error` event, phase
   * `backplane.announce`, and they catch up when their cached participants expire).
   */
  removeMember(room: string, user: string): Promise<void> {
    this.removeLocally(room, user);
    return this.announce({ kind: 'remove', room, user })?.catch(noop) ?? RESOLVED;
  }

  private removeLocally(room: string, user: string): void {
    this.membership.remove(room, user);
    const state = this.users.get(user);
    if (!state) return;
    const adding = this.adding.get(addingKey(room, user));
    if (adding) {
      adding.cancelled = true;
      this.adding.delete(adding.key);
    }
    for (const conn of state.conns) {
      // An opening connection, or one retrying roomsOf: its answer may predate this.
      if (conn.state === 'opening' || this.changedWhileOpening.has(conn)) this.changeWhileOpening(conn, room, false);
      if (conn.state !== 'opening') this.removeFromRoom(conn, room, true, 'removed');
      const held = this.heldOut.size > 0 ? this.heldOut.get(conn) : undefined;
      if (held?.delete(room) && held.size === 0) this.heldOut.delete(conn);
    }
  }

  /** Records an addition or a removal (false) for an opening connection's auto-join; the last one counts. */
  private changeWhileOpening(conn: ConnState, room: string, change: Addition | false): void {
    const changed = this.changedWhileOpening.get(conn);
    if (changed) changed.set(room, change);
    else this.changedWhileOpening.set(conn, new Map([[room, change]]));
  }

  /**
   * Forgets the cached participants of `room`; the next broadcast asks the loader again.
   * With a backplane, every process forgets them, and a participant your change added
   * is sent every message published after this call, on whichever process their
   * connections are, once a broadcast finds them there.
   *
   * @returns a promise that never rejects: it resolves at once without a backplane, and
   * with one once the other processes were told (a failure is an `error` event).
   */
  invalidate(room: string): Promise<void> {
    if (!this.backplane) {
      this.membership.invalidate(room);
      return RESOLVED;
    }
    // The room's seq as the change was made, as addMember's: a participant a broadcast
    // finds outside the room after this, on any process, is sent the messages after it
    // (see `reconcile`), though that process may not have received the room meanwhile.
    const from = this.seqNow(room);
    if (!(from instanceof Promise)) {
      this.membership.invalidate(room, from);
      return this.announce({ kind: 'invalidate', room, seq: from })?.catch(noop) ?? RESOLVED;
    }
    this.membership.invalidate(room);
    return from
      .then((seq) => {
        // Forgotten again once the seq is known: an answer asked for meanwhile would not carry it.
        this.membership.invalidate(room, seq);
        return this.announce({ kind: 'invalidate', room, seq });
      })
      .catch(noop);
  }

  /**
   * Sends a membership change to the other processes; undefined without a backplane.
   * A failure is reported (`error` event, phase `backplane.announce`): the other
   * processes then catch up when their cached participants expire (`membershipTtlMs`).
   */
  private announce(change: MembershipChange): Promise<void> | undefined {
    const backplane = this.backplane;
    if (!backplane) return undefined;
    return (async () => {
      await this.started;
      await backplane.announce(change);
    })().catch((error: unknown) => {
      this.reportError('backplane.announce', error, change.kind === 'presence' ? { user: change.user } : 'room' in change ? { room: change.room } : {});
      throw new RoomwireError('internal', `could not tell the other processes about this membership change: ${asError(error).message}`, { cause: error });
    });
  }

  /**
   * Another process's `addMember`. Notices are not ordered with the application's
   * writes: a removal made here since may be newer. So the loader is asked, and only a
   * user it still lists is brought in, as ensure-participants would.
   */
  private async addAnnounced(room: string, user: string, from: number | undefined, attempt = 1): Promise<void> {
    this.membership.invalidate(room);
    const state = this.users.get(user);
    if (!state) return;
    // Its open connections are owed the messages after `from` from now on, whatever puts
    // them in the room first (a join of theirs, say): marked while the loader is asked.
    const open =
      from === undefined
        ? []
        : [...state.conns].filter(
            (conn) => conn.state === 'open' && !conn.rooms.has(room) && !conn.left.has(room) && conn.rooms.size < this.options.maxRoomsPerConnection,
          );
    this.markEntering(open, room, true, from);
    try {
      await this.checkAnnounced(room, user, from, attempt);
    } finally {
      this.markEntering(open, room, false);
    }
  }

  private async checkAnnounced(room: string, user: string, from: number | undefined, attempt: number): Promise<void> {
    const loaded = this.membership.load(room);
    if (!(loaded instanceof Promise)) return this.addChecked(room, user, from, attempt, loaded);
    // Connections of the user opening meanwhile wait for this check (see checkingAdds).
    let resolve!: () => void;
    const check = new Promise<void>((r) => (resolve = r));
    let checks = this.checkingAdds.get(user);
    if (!checks) this.checkingAdds.set(user, (checks = new Set()));
    checks.add(check);
    const checked = (): void => {
      checks.delete(check);
      if (checks.size === 0 && this.checkingAdds.get(user) === checks) this.checkingAdds.delete(user);
      resolve();
    };
    let added = RESOLVED;
    try {
      // Recorded for opening connections (addLocally's first step) before they go on.
      added = this.addChecked(room, user, from, attempt, await loaded);
    } finally {
      checked();
    }
    await added;
  }

  private addChecked(room: string, user: string, from: number | undefined, attempt: number, snapshot: MembersSnapshot): Promise<void> {
    if (snapshot.stale) this.checkAgain(attempt, (next) => this.addAnnounced(room, user, from, next), { room, user });
    return snapshot.users?.has(user) === true ? this.addLocally(room, user, { from }) : RESOLVED;
  }

  /**
   * Another process's notice (`addMember`, `participants`) whose check failed (the loader
   * did not answer, so only what it answered before was known): checked again with
   * backoff, as a failed `roomsOf` is, since the process that sent it counts its users as
   * told and will not send it again.
   */
  private checkAgain(attempt: number, check: (attempt: number) => Promise<void>, context: { room: string; user?: string }): void {
    if (attempt >= ROOMS_OF_ATTEMPTS) return;
    const timer = setTimeout(() => {
      if (!this.closing) check(attempt + 1).catch((error: unknown) => this.reportError('ensure', error, context));
    }, ROOMS_OF_BACKOFF_MS * 2 ** (attempt - 1));
    timer.unref?.();
  }

  /** A change announced by another process: applied here, not announced again. */
  private applyChange(change: MembershipChange): void {
    switch (change.kind) {
      case 'add':
        this.addAnnounced(change.room, change.user, change.seq).catch((error: unknown) => this.reportError('addMember', error, { room: change.room, user: change.user }));
        return;
      case 'remove':
        this.removeLocally(change.room, change.user);
        // An add made here may be newer than this removal: the next broadcast asks the
        // loader again, and ensure-participants brings the user back if so.
        this.membership.invalidate(change.room);
        return;
      case 'invalidate':
        this.membership.invalidate(change.room, change.seq);
        return;
      case 'rejoined':
        // Told again with the next broadcast into each room.
        this.told.clear();
        return;
      case 'participants':
        this.reachLocally(change.room, change.users, change.seq).catch((error: unknown) => this.reportError('ensure', error, { room: change.room }));
        return;
      case 'presence':
        if (this.options.presence) this.presenceFrames(change.user, change.event, this.withAway(change.user, change.event, change.rooms));
        return;
    }
  }

  /**
   * Cluster-wide ensure-participants, on the broadcasting process: tells the others about
   * participants of `room` new since the last time (a changed cache stamp), so that a
   * process holding their connections outside the room (it may not even receive the
   * room) brings them in. Costs a map lookup per broadcast while the participants stay
   * the same.
   */
  private tellParticipants(room: string, seq: number): void {
    const cached = this.membership.cached(room);
    const users = cached?.members;
    if (!users) return;
    const stamp = cached.stamp;
    const before = this.told.get(room);
    if (before?.stamp === stamp) return;
    const fresh: string[] = [];
    for (const user of users) if (!before?.users.has(user)) fresh.push(user);
    // The cache's own set: addMember/removeMember change it in place, and are announced themselves.
    const record = { stamp, users };
    this.told.delete(room);
    this.told.set(room, record);
    // As many rooms as the membership cache keeps; the oldest told is forgotten first.
    if (this.told.size > this.options.membershipCacheSize) this.told.delete(this.told.keys().next().value as string);
    for (let i = 0; i < fresh.length; i += PARTICIPANTS_PER_NOTICE) {
      const notice = this.announce({ kind: 'participants', room, users: fresh.slice(i, i + PARTICIPANTS_PER_NOTICE), seq });
      // Not told: the next broadcast tries again.
      notice?.catch(() => {
        if (this.told.get(room) === record) this.told.delete(room);
      });
    }
  }

  /**
   * Another process broadcast `seq` into `room` and found `users` among its participants.
   * Connections of theirs here that are outside the room (and did not leave it) enter it,
   * after this process's own loader agrees, and are sent the messages from `seq` on; those
   * at their room limit are held outside it instead (see `holdOut`), sent the same.
   */
  private async reachLocally(room: string, users: readonly string[], seq: number, attempt = 1): Promise<void> {
    const outside = (conn: ConnState): boolean =>
      conn.state === 'open' && !conn.rooms.has(room) && !conn.left.has(room) && this.mayReach(conn, room);
    const candidates: ConnState[] = [];
    let unknown = false;
    const cached = this.membership.peek(room);
    for (const id of users) {
      const user = this.users.get(id);
      if (!user) continue;
      for (const conn of user.conns) {
        if (!outside(conn)) continue;
        candidates.push(conn);
        if (!cached?.has(id)) unknown = true;
      }
    }
    if (candidates.length === 0 || this.closing) return;
    // This process's cache does not know them yet: ask the loader, never trust the notice alone.
    if (unknown) this.membership.invalidate(room);
    // A removal made while they wait for their turn, or for the history, keeps them out.
    const adding = new Map<string, Adding>();
    for (const conn of candidates) if (!adding.has(conn.user.id)) adding.set(conn.user.id, this.beginAdding(room, conn.user.id));
    const wanted = (conn: ConnState): boolean => outside(conn) && adding.get(conn.user.id)?.cancelled === false;
    this.markEntering(candidates, room, true, seq - 1);
    try {
      await this.openFeed(room);
      await this.inRoomOrder(room, async () => {
        const loaded = this.membership.load(room);
        const snapshot = loaded instanceof Promise ? await loaded : loaded;
        if (snapshot.stale) this.checkAgain(attempt, (next) => this.reachLocally(room, users, seq, next), { room });
        const entering = candidates.filter((conn) => wanted(conn) && snapshot.users?.has(conn.user.id) === true);
        if (entering.length === 0) return;
        const read = await this.missedSince(room, this.lowestStart(entering, room, seq - 1));
        for (const conn of entering) {
          if (!wanted(conn)) continue;
          const { seq: joinedAt, missed } = narrowMissed(read, this.entryStart(conn, room, seq - 1));
          this.enterOrHold(conn, room, 'ensure', joinedAt, missed);
        }
      });
    } finally {
      for (const entry of adding.values()) this.endAdding(entry);
      this.markEntering(candidates, room, false);
    }
  }

  /**
   * Admits one connection to a room, whoever its user is (server-driven join). The
   * connection is told with a `joined` frame.
   *
   * @returns false when the connection is unknown or at its room limit.
   */
  async join(connectionId: string, room: string): Promise<boolean> {
    if (!isRoomName(room)) throw new RoomwireError('bad_request', ROOM_NAME_RULE);
    const conn = this.conns.get(connectionId);
    if (!conn || conn.state !== 'open') return false;
    if (conn.rooms.has(room)) return true;
    if (conn.rooms.size >= this.options.maxRoomsPerConnection) return false;
    if (conn.left.has(room)) (conn.left as Set<string>).delete(room);
    await this.enterRoom(conn, room, 'admitted', 'server', undefined);
    return conn.rooms.has(room);
  }

  /**
   * Takes one connection out of a room (server-driven leave). It is told with a `left`
   * frame and, like a client `leave`, is not put back by auto-join or ensure-participants.
   *
   * @returns false when the connection was not in the room.
   */
  leave(connectionId: string, room: string): boolean {
    const conn = this.conns.get(connectionId);
    if (!conn || !conn.rooms.has(room)) return false;
    this.leaveRoom(conn, room, true, 'server');
    markLeft(conn, room, this.options.maxRoomsPerConnection);
    return true;
  }

  // ---------------------------------------------------------------- inspection

  /** Ids of users with at least one open connection on this process. */
  onlineUsers(): string[] {
    const out: string[] = [];
    for (const user of this.users.values()) if (user.open > 0) out.push(user.id);
    return out;
  }

  /** The open connections of a user on this process. */
  connectionsOf(user: string): ConnectionInfo[] {
    const state = this.users.get(user);
    if (!state) return [];
    return [...state.conns].filter((conn) => conn.state !== 'closed').map((conn) => this.describe(conn));
  }

  /** The rooms a connection is in; empty for an unknown connection. */
  roomsOf(connectionId: string): string[] {
    const conn = this.conns.get(connectionId);
    return conn ? conn.rooms.keyList() : [];
  }

  /** Participants of `room` (per the membership loader) that are online on this process. */
  async membersOnline(room: string): Promise<string[]> {
    const loaded = this.membership.load(room);
    const snapshot = loaded instanceof Promise ? await loaded : loaded;
    const out: string[] = [];
    for (const user of snapshot.users ?? []) if ((this.users.get(user)?.open ?? 0) > 0) out.push(user);
    return out;
  }

  /** Counts of connections, users, rooms and messages. */
  stats(): RoomManagerStats {
    let rooms = 0;
    for (const state of this.rooms.values()) if (state.members.size > 0) rooms++;
    return {
      connections: this.conns.size,
      users: this.onlineUsers().length,
      rooms,
      messages: this.messageCount,
      cachedRooms: this.membership.size,
    };
  }

  private describe(conn: ConnState): ConnectionInfo {
    return { id: conn.id, user: conn.user.id, rooms: conn.rooms.keyList(), openedAt: conn.openedAt };
  }

  // ---------------------------------------------------------------- shutdown

  /**
   * Stops accepting connections and frames, lets the frames already accepted finish (a
   * publish whose `onPublish` hook is running is delivered and acknowledged), closes
   * every open connection with 1001 ("server shutting down; reconnect elsewhere"), and
   * resolves once all have closed. All of it takes at most `closeTimeoutMs`: then the
   * remaining connections are dropped. With a backplane, it then also waits for the
   * backplane's own close (leaving the cluster), which is not counted in `closeTimeoutMs`:
   * `RedisBackplane` bounds each of its steps by its `commandTimeoutMs`. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const deadline = Date.now() + Math.min(this.options.closeTimeoutMs, MAX_TIMER_MS);
    // Accepted before close(): finished while the connections are open, so a publish
    // stored by its hook is also broadcast and acknowledged, and no hook runs on after
    // close() resolved (the application closes its database then).
    if (this.inflightFrames > 0) {
      await this.until(
        new Promise<void>((resolve) => {
          this.settled = resolve;
        }),
        deadline,
      );
      this.settled = undefined;
    }
    await this.closeConnections(deadline);
    this.shutDown = true;
    const backplane = this.backplane;
    if (backplane) {
      clearInterval(this.sweepTimer);
      for (const feed of this.feeds.values()) clearTimeout(feed.gapTimer);
      this.feeds.clear();
      // No local delivery will come: broadcasts still waiting for one resolve now.
      for (const [id, waiter] of [...this.waiters]) if (waiter.message) this.releaseWaiter(id, waiter.message);
      // Closed even when it never started (Redis down at boot): its connections would
      // otherwise keep reconnecting, and the process would not exit. A start still under
      // way is waited for (within closeTimeoutMs), so it does not outlive the close.
      await this.until(this.started ?? RESOLVED, deadline);
      try {
        await backplane.close();
      } catch (error) {
        this.reportError('backplane.close', error, {});
      }
    }
    this.logger.info({}, 'room manager closed');
  }

  private async closeConnections(deadline: number): Promise<void> {
    if (this.conns.size > 0) {
      const drained = new Promise<void>((resolve) => {
        this.drained = resolve;
      });
      for (const conn of [...this.conns.values()]) safeClose(conn.socket, CloseCode.GoingAway, 'server shutting down');
      await this.until(drained, deadline);
      for (const conn of [...this.conns.values()]) this.release(conn, CloseCode.GoingAway, 'server shutting down');
    }
  }

  /** Waits for `promise`, or until `deadline` (a `Date.now()` time), whichever comes first. */
  private until(promise: Promise<unknown>, deadline: number): Promise<void> {
    return withTimeout(promise, Math.max(0, deadline - Date.now()), 'close').then(noop, noop);
  }

  // ---------------------------------------------------------------- sending

  /**
   * Presence frames for a user who came online or went offline: at once on a single
   * process; with a backplane once the cluster's record says this was the crossing, here
   * and (announced) on every other process.
   */
  /**
   * Where a closing connection's `offline` goes: the rooms it is in, and the rooms the
   * user's connections left or were in when they closed before it (their members saw the
   * user's `online` too). While the user has another open connection here, the rooms are
   * kept for the last one instead.
   */
  private offlineRoomsOf(conn: ConnState): string[] {
    const user = conn.user;
    if (user.offlineRooms === undefined && user.open === 0) return conn.rooms.keyList();
    if (user.open > 0) {
      for (const room of conn.rooms.keyList()) this.keepOfflineRoom(user, room);
      return [];
    }
    const rooms = user.offlineRooms ?? new Set<string>();
    for (const room of conn.rooms.keyList()) rooms.add(room);
    user.offlineRooms = undefined;
    return [...rooms];
  }

  private afterPresenceChange(user: string, event: 'online' | 'offline', rooms: string[], crossed: boolean | Promise<boolean>): void {
    if (crossed === false) {
      this.keepAway(user, event, rooms);
      return;
    }
    if (crossed === true) {
      this.presenceFrames(user, event, this.withAway(user, event, rooms));
      return;
    }
    void crossed.then((yes) => {
      if (!yes) {
        this.keepAway(user, event, rooms);
        return;
      }
      const all = this.withAway(user, event, rooms);
      this.presenceFrames(user, event, all);
      this.announce({ kind: 'presence', user, event, rooms: all })?.catch(noop);
    });
  }

  /**
   * Presence the cluster decided (see `BackplaneHandlers.presence`): sent here and
   * announced, as a crossing of this process's own is. An `online` goes to the rooms of
   * the user's open connections here.
   */
  private clusterPresence(event: 'online' | 'offline', users: readonly LostUser[]): void {
    if (!this.options.presence) return;
    for (const { user, rooms } of users) {
      const all = this.withAway(user, event, event === 'online' ? this.openRoomsOf(user) : rooms);
      this.presenceFrames(user, event, all);
      this.announce({ kind: 'presence', user, event, rooms: all })?.catch(noop);
    }
  }

  /** The rooms of `user`'s open connections on this process. */
  private openRoomsOf(user: string): string[] {
    const rooms = new Set<string>();
    for (const conn of this.users.get(user)?.conns ?? []) {
      if (conn.state === 'open') for (const room of conn.rooms.keyList()) rooms.add(room);
    }
    return [...rooms];
  }

  /** The user's last connection here closed, and another process still has one: keep its rooms for the cluster's `offline`. */
  private keepAway(user: string, event: 'online' | 'offline', rooms: readonly string[]): void {
    if (event !== 'offline' || rooms.length === 0) return;
    const kept = this.awayRooms.get(user) ?? new Set<string>();
    // Most recent last, so the oldest user is the first forgotten.
    this.awayRooms.delete(user);
    if (this.awayRooms.size >= MAX_AWAY_USERS) this.awayRooms.delete(this.awayRooms.keys().next().value as string);
    for (const room of rooms) {
      kept.delete(room);
      if (kept.size >= this.options.maxRoomsPerConnection) kept.delete(kept.values().next().value as string);
      kept.add(room);
    }
    this.awayRooms.set(user, kept);
  }

  /**
   * The rooms of a cluster-wide presence change, with the user's rooms kept here
   * (`offline`), which are then forgotten; an `online` forgets them too, as stale.
   */
  private withAway(user: string, event: 'online' | 'offline', rooms: readonly string[]): readonly string[] {
    const kept = this.awayRooms.get(user);
    if (!kept) return rooms;
    this.awayRooms.delete(user);
    if (event === 'online') return rooms;
    for (const room of rooms) kept.add(room);
    return [...kept];
  }

  /** Sends `presence` frames to this process's members of `rooms`, the user's own connections excepted. */
  private presenceFrames(user: string, event: 'online' | 'offline', rooms: readonly string[]): void {
    for (const room of rooms) {
      const state = this.rooms.get(room);
      if (!state) continue;
      const text = encodeServerFrame({ type: 'presence', room, user, event });
      for (const { conn: other } of state.members) {
        if (other.user.id !== user) this.sendText(other, text);
      }
    }
  }

  private send(conn: ConnState, frame: ServerFrame): boolean {
    return this.sendText(conn, encodeServerFrame(frame));
  }

  /**
   * Sends one frame that is not a room broadcast (those check in `fanOut`): an ack, an
   * error, a replayed message, a pong. A connection whose unsent bytes are past
   * `maxBufferedBytes` is closed with 4008 instead, whatever fills its buffer.
   */
  private sendText(conn: ConnState, text: string): boolean {
    if (conn.state === 'closed') return false;
    if (conn.socket.bufferedAmount > this.options.maxBufferedBytes) {
      this.dropSlow(conn);
      return false;
    }
    try {
      return conn.socket.send(text) !== false;
    } catch {
      return false;
    }
  }

  private sendError(
    conn: ConnState,
    code: ErrorCode,
    message: string,
    extra: { ref?: string | undefined; room?: string | undefined; details?: unknown } = {},
  ): void {
    const frame: ServerFrame = { type: 'error', code, message };
    if (extra.ref !== undefined) frame.ref = extra.ref;
    if (extra.room !== undefined) frame.room = extra.room;
    if (extra.details !== undefined) frame.details = extra.details;
    this.send(conn, frame);
  }

  private reportError(phase: string, error: unknown, context: { connectionId?: string; room?: string; user?: string }): void {
    const err = asError(error);
    this.logger.warn({ ...context, phase, err }, `${phase} failed: ${err.message}`);
    try {
      this.emit('error', err, { phase, ...context });
    } catch (thrown) {
      this.logger.error({ err: asError(thrown), phase }, 'an error listener threw');
    }
  }

  /**
   * Tells the application's listeners. One that throws is reported (an `error` event,
   * phase `listener`) and the change under way goes on: a close half done, or a broadcast
   * without its ack, would leave state behind that nothing repairs.
   */
  private notify<K extends Exclude<keyof RoomManagerEvents, 'error'>>(event: K, payload: Parameters<RoomManagerEvents[K]>[0]): void {
    try {
      (this.emit as (event: K, payload: unknown) => boolean)(event, payload);
    } catch (error) {
      this.reportError('listener', error, {});
    }
  }
}

/** The manager's side of {@link OpenConnection}. */
interface ConnectionCore {
  receive(conn: ConnState, data: string | Uint8Array, isBinary: boolean): void;
  release(conn: ConnState, code: number, reason: string): void;
}

/** The handlers `open()` gives a transport: one small object per connection, its methods shared. */
class OpenConnection implements ConnectionHandlers {
  constructor(
    private readonly core: ConnectionCore,
    private readonly conn: ConnState,
    readonly ready: Promise<void>,
  ) {}

  get id(): string {
    return this.conn.id;
  }

  message(data: string | Uint8Array, isBinary: boolean): void {
    this.core.receive(this.conn, data, isBinary);
  }

  closed(code: number, reason: string): void {
    this.core.release(this.conn, code, reason);
  }
}

/** Every connection's `left` until its first leave; never written to (see `markLeft`). */
const NO_ROOMS: ReadonlySet<string> = new Set();

/** Records a client's `leave`; past `max` rooms the oldest leave is forgotten, never the newest. */
function markLeft(conn: ConnState, room: string, max: number): void {
  if (conn.left === NO_ROOMS) {
    conn.left = new Set([room]);
    return;
  }
  const left = conn.left as Set<string>;
  left.delete(room);
  if (left.size >= max) left.delete(left.values().next().value as string);
  left.add(room);
}

/** The cid window's key: JSON, so no user, room and cid can run into another's (all may hold `\n`). */
function dedupeKey(user: string, room: string, cid: string): string {
  return JSON.stringify([user, room, cid]);
}

function safeClose(socket: Connection, code: number, reason: string): void {
  try {
    socket.close(code, reason);
  } catch {
    // Already closed: nothing left to do.
  }
}

/** Turns a validator's error into client-visible details without leaking internals. */
function describeValidationError(error: unknown): unknown {
  if (typeof error === 'object' && error !== null && Array.isArray((error as { issues?: unknown }).issues)) {
    return {
      issues: (error as { issues: { path?: unknown[]; message?: unknown }[] }).issues.map((issue) => ({
        path: Array.isArray(issue.path) ? issue.path.map(String).join('.') : '',
        message: String(issue.message ?? 'invalid'),
      })),
    };
  }
  return undefined;
}
