import { Buffer } from 'node:buffer';
import { EventEmitter } from 'eventemitter3';
import type { Handshake, Principal } from './authenticator.js';
import type { Connection, ConnectionHandlers, ConnectionInfo } from './connection.js';
import { DedupeWindow } from './dedupe-window.js';
import type { DeliveryReport } from './delivery-report.js';
import { HandshakeError, RoomwireError, isHandshakeError, isRoomwireError, type ErrorCode } from './errors.js';
import { InMemoryHistoryStore, type HistoryStore, type StoredMessage } from './history-store.js';
import { createIdGenerator } from './ids.js';
import { silentLogger, type Logger } from './logger.js';
import { MembershipCache, toStringSet, type MembersSnapshot } from './membership-cache.js';
import { resolveOptions, type ResolvedOptions, type RoomManagerOptions } from './options.js';
import { decodeClientFrame } from './protocol/decode.js';
import { encodeData, encodeMessageFrame, encodeServerFrame } from './protocol/encode.js';
import type { ClientFrame, JoinFrame, LeaveFrame, PublishFrame, ResumeFrame, ServerFrame } from './protocol/frames.js';
import { CloseCode, MAX_ROOM_LENGTH, PROTOCOL_VERSION } from './protocol/limits.js';
import { TimeoutError, withTimeout } from './timeout.js';
import { TokenBucket } from './token-bucket.js';
import type { RateLimit } from './options.js';

/** Why a connection entered a room. */
export type JoinReason = 'auto' | 'join' | 'ensure' | 'member' | 'server';
/** Why a connection left a room. */
export type LeaveReason = 'leave' | 'removed' | 'server';

/** The typed events of a {@link RoomManager}. */
export interface RoomManagerEvents {
  /** A connection was authenticated, auto-joined and sent `welcome`. */
  connect: (event: { connectionId: string; user: string; rooms: string[] }) => void;
  /** A connection closed. */
  disconnect: (event: { connectionId: string; user: string; code: number; reason: string }) => void;
  /** A connection entered a room. */
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
  /** A connection id that does not get the message (the one that caused it). */
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
  mode: 'member' | 'admitted';
  /** The seq of the first message sent live to this connection in the room; 0 before any. */
  firstSeq: number;
}

interface UserState {
  readonly id: string;
  principal: Principal;
  readonly conns: Set<ConnState>;
  /** Connections past `welcome` and not closed. */
  open: number;
}

interface ConnState {
  readonly id: string;
  readonly user: UserState;
  readonly principal: Principal;
  readonly socket: Connection;
  readonly rooms: Map<string, Membership>;
  /** Rooms this connection left: auto-join and ensure-participants never put it back. */
  readonly left: Set<string>;
  state: 'opening' | 'open' | 'closed';
  /** Frames received before `welcome` was sent, handled right after it. */
  early: [data: string | Uint8Array, isBinary: boolean][] | undefined;
  /** The tail of this connection's frame handling; frames are handled in arrival order. */
  queue: Promise<void> | undefined;
  inflight: number;
  readonly publishBucket: TokenBucket | undefined;
  readonly joinBucket: TokenBucket | undefined;
  readonly strikes: TokenBucket;
  /** The id of the last message whose send to this connection threw, for the fallback. */
  lastFailedId: string;
  readonly openedAt: number;
  expiryTimer: ReturnType<typeof setTimeout> | undefined;
}

interface RoomState {
  readonly name: string;
  readonly members: Set<Membership>;
  /** The tail of this room's ordered work (broadcasts, joins, replays). */
  tail: Promise<void> | undefined;
  /** What the last reconciliation found; reused while nothing it depends on changed. */
  survey: RoomSurvey | undefined;
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

/** Publish cids remembered at once; the oldest are forgotten first past this. */
const MAX_DEDUPE_ENTRIES = 100_000;
/** Frames one connection may have waiting for handling before more are refused. */
const MAX_INFLIGHT_FRAMES = 256;
/** Longest delay setTimeout accepts. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const noop = (): void => {};

function isValidRoom(room: unknown): room is string {
  return typeof room === 'string' && room.length >= 1 && room.length <= MAX_ROOM_LENGTH;
}

function byteLength(data: string | Uint8Array): number {
  return typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
}

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
  private drained: (() => void) | undefined;

  /** @throws {OptionsError} when an option is missing or of the wrong type. */
  constructor(options: RoomManagerOptions) {
    super();
    this.options = resolveOptions(options);
    this.logger = this.options.logger ?? silentLogger;
    this.logging = this.options.logger !== undefined;
    const history = this.options.history;
    this.history = typeof history === 'number' ? new InMemoryHistoryStore(history) : history;
    this.membership = new MembershipCache(this.options.membership, {
      ttlMs: this.options.membershipTtlMs,
      timeoutMs: this.options.loaderTimeoutMs,
      maxRooms: this.options.membershipCacheSize,
      onError: (room, error) => this.reportError('membersOf', error, { room }),
    });
    this.dedupe = new DedupeWindow(this.options.dedupeWindowMs, Date.now, MAX_DEDUPE_ENTRIES);
  }

  /** The limits transports enforce before the core sees a frame. */
  get limits(): {
    /** Largest frame a client may send, in bytes; a transport closes the connection with 1009 on a larger one. */
    maxFrameBytes: number;
    /** How often a transport pings each connection, in ms; one that missed the last ping is dropped. */
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
      user = { id: principal.id, principal, conns: new Set(), open: 0 };
      this.users.set(user.id, user);
    }
    user.principal = principal;
    const conn: ConnState = {
      id,
      user,
      principal,
      socket,
      rooms: new Map(),
      left: new Set(),
      state: 'opening',
      early: [],
      queue: undefined,
      inflight: 0,
      publishBucket: bucket(this.options.publishRate),
      joinBucket: bucket(this.options.joinRate),
      strikes: new TokenBucket(this.options.rateLimitStrikes.burst, this.options.rateLimitStrikes.perSecond),
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
    return {
      id,
      ready,
      message: (data, isBinary) => this.receive(conn, data, isBinary),
      closed: (code, reason) => this.release(conn, code, reason),
    };
  }

  private async autoJoin(conn: ConnState): Promise<void> {
    let rooms: string[] = [];
    try {
      const answer = await withTimeout(
        Promise.resolve().then(() => this.options.membership.roomsOf(conn.principal)),
        this.options.loaderTimeoutMs,
        'roomsOf',
      );
      rooms = [...toStringSet(answer)];
    } catch (error) {
      // The user is still served: ensure-participants repairs membership on the next broadcast.
      this.reportError('roomsOf', error, { connectionId: conn.id, user: conn.user.id });
    }
    const joined: string[] = [];
    for (const room of rooms) {
      if (!isValidRoom(room)) {
        this.logger.warn({ user: conn.user.id, room: String(room).slice(0, 300) }, 'roomsOf returned an invalid room name; skipped');
        continue;
      }
      if (joined.length >= this.options.maxRoomsPerConnection) {
        this.logger.warn(
          { user: conn.user.id, rooms: rooms.length, limit: this.options.maxRoomsPerConnection },
          `user ${conn.user.id} has more rooms than maxRoomsPerConnection; auto-joined the first ${joined.length}`,
        );
        break;
      }
      joined.push(room);
    }
    // Where each room stands, read before the joins so that nothing can be sent to the
    // connection before welcome. A synchronous store answers in the same tick as the joins;
    // an asynchronous one may answer a seq slightly behind, and a resume from it replays
    // exactly what the client missed.
    const seqs: Record<string, number> = Object.create(null) as Record<string, number>;
    for (const room of joined) {
      const latest = this.history.latestSeq(room);
      seqs[room] = latest instanceof Promise ? await latest : latest;
    }
    if (conn.state === 'closed') return;
    for (const room of joined) this.addToRoom(conn, room, 'member', 'auto');
    conn.state = 'open';
    conn.user.open++;
    this.topology++;
    this.send(conn, {
      type: 'welcome',
      protocol: PROTOCOL_VERSION,
      connectionId: conn.id,
      user: { id: conn.user.id },
      ...(this.history.epoch === undefined ? {} : { epoch: this.history.epoch }),
      rooms: joined,
      seqs,
      heartbeatMs: this.options.heartbeatMs,
    });
    if (this.logging) {
      this.logger.info({ user: conn.user.id, connectionId: conn.id, rooms: joined.length }, `user ${conn.user.id} auto-joined to ${joined.length} rooms`);
    }
    this.emit('connect', { connectionId: conn.id, user: conn.user.id, rooms: joined });
    if (this.options.presence && conn.user.open === 1) this.announcePresence(conn, 'online');
    this.armExpiry(conn);
    const early = conn.early;
    conn.early = undefined;
    if (early) for (const [data, isBinary] of early) this.receive(conn, data, isBinary);
  }

  private armExpiry(conn: ConnState): void {
    const expiresAt = conn.principal.expiresAt;
    if (expiresAt === undefined || conn.state === 'closed') return;
    const delay = expiresAt - Date.now();
    if (delay <= 0) {
      safeClose(conn.socket, CloseCode.PolicyViolation, 'credentials expired');
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
    if (conn.expiryTimer) clearTimeout(conn.expiryTimer);
    const user = conn.user;
    if (wasOpen) user.open--;
    if (this.options.presence && wasOpen && user.open === 0) this.announcePresence(conn, 'offline');
    for (const room of [...conn.rooms.keys()]) this.removeFromRoom(conn, room, false, 'server');
    user.conns.delete(conn);
    if (user.conns.size === 0) this.users.delete(user.id);
    this.conns.delete(conn.id);
    if (this.logging) this.logger.debug({ user: user.id, connectionId: conn.id, code, reason }, `connection ${conn.id} of user ${user.id} closed (${code})`);
    this.emit('disconnect', { connectionId: conn.id, user: user.id, code, reason });
    if (this.conns.size === 0) this.drained?.();
  }

  // ---------------------------------------------------------------- frames

  private receive(conn: ConnState, data: string | Uint8Array, isBinary: boolean): void {
    if (conn.state === 'closed') return;
    const size = typeof data === 'string' && data.length * 3 <= this.options.maxFrameBytes ? data.length : byteLength(data);
    if (size > this.options.maxFrameBytes) {
      safeClose(conn.socket, CloseCode.MessageTooBig, 'frame too large');
      return;
    }
    if (conn.early) {
      if (conn.early.length >= MAX_INFLIGHT_FRAMES) {
        this.sendError(conn, 'rate_limited', 'too many frames before welcome');
        return;
      }
      conn.early.push([data, isBinary]);
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
    const limiter = frame.type === 'publish' ? conn.publishBucket : conn.joinBucket;
    if (limiter && !limiter.take()) {
      this.refuseOverLimit(conn, frame.type === 'publish' ? 'publish' : 'join', frame.ref);
      return;
    }
    // Shutting down: anything accepted now could be neither delivered nor acknowledged; the
    // client resends it (same cid) after it reconnects elsewhere.
    if (this.closing) return;
    if (conn.inflight >= MAX_INFLIGHT_FRAMES) {
      this.sendError(conn, 'rate_limited', 'too many frames waiting; slow down', { ref: frame.ref });
      return;
    }
    conn.inflight++;
    const run = (): Promise<void> =>
      this.handle(conn, frame, size).then(
        () => {
          conn.inflight--;
        },
        (error: unknown) => {
          conn.inflight--;
          this.reportError(`frame:${frame.type}`, error, { connectionId: conn.id, user: conn.user.id });
          this.sendError(conn, 'internal', 'internal error', { ref: frame.ref });
        },
      );
    conn.queue = conn.queue ? conn.queue.then(run) : run();
    const tail = conn.queue;
    void tail.then(() => {
      if (conn.queue === tail) conn.queue = undefined;
    });
  }

  /** Answers `rate_limited`; a connection that keeps at it is closed with 4008. */
  private refuseOverLimit(conn: ConnState, kind: 'publish' | 'join', ref: string | undefined): void {
    if (conn.strikes.take()) {
      this.sendError(conn, 'rate_limited', `too many ${kind} frames; slow down`, { ref });
      this.emit('rateLimited', { connectionId: conn.id, user: conn.user.id, kind, closed: false });
      return;
    }
    this.logger.warn({ user: conn.user.id, connectionId: conn.id, kind }, `closing connection ${conn.id} of user ${conn.user.id}: kept exceeding its ${kind} rate limit`);
    this.emit('rateLimited', { connectionId: conn.id, user: conn.user.id, kind, closed: true });
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
      if (conn.rooms.size >= this.options.maxRoomsPerConnection) {
        this.sendError(conn, 'forbidden', `room limit reached (at most ${this.options.maxRoomsPerConnection} rooms per connection)`, { ref, room });
        return;
      }
      let mode: Membership['mode'] = 'member';
      if (!(await this.isParticipant(room, conn.user.id))) {
        if (!(await this.canJoin(conn, room))) {
          this.sendError(conn, 'forbidden', 'not allowed to join this room', { ref, room });
          return;
        }
        mode = 'admitted';
      }
      if (conn.state === 'closed') return;
      conn.left.delete(room);
      await this.inRoomOrder(room, async () => {
        if (!conn.rooms.has(room) && conn.state !== 'closed') this.addToRoom(conn, room, mode, 'join');
        this.send(conn, { type: 'joined', room, seq: await this.history.latestSeq(room), ...(ref === undefined ? {} : { ref }) });
      });
      return;
    }
    // In room order, so the seq cannot name a message that has not been sent yet.
    await this.inRoomOrder(room, async () => {
      this.send(conn, { type: 'joined', room, seq: await this.history.latestSeq(room), ...(ref === undefined ? {} : { ref }) });
    });
  }

  private handleLeave(conn: ConnState, frame: LeaveFrame): void {
    const { room, ref } = frame;
    if (conn.rooms.has(room)) this.removeFromRoom(conn, room, false, 'leave');
    if (conn.left.size < this.options.maxRoomsPerConnection) conn.left.add(room);
    this.send(conn, ref === undefined ? { type: 'left', room } : { type: 'left', room, ref });
  }

  private async handlePublish(conn: ConnState, frame: PublishFrame, frameBytes: number): Promise<void> {
    const { room, ref, cid } = frame;
    if (!conn.rooms.has(room) && !(await this.ensurePublisher(conn, room))) {
      this.sendError(conn, 'forbidden', 'not in this room', { ref, room });
      return;
    }
    // A frame no larger than the limit cannot hold larger data, so most publishes skip the re-encode.
    const limit = this.options.maxMessageBytes;
    if (frameBytes > limit && Buffer.byteLength(JSON.stringify(frame.data)) > limit) {
      this.sendError(conn, 'too_large', `message data is over ${limit} bytes`, { ref, room });
      return;
    }
    const key = cid === undefined ? undefined : `${conn.user.id}\n${room}\n${cid}`;
    let accepted = key === undefined ? undefined : this.dedupe.get(key);
    if (!accepted) {
      accepted = this.acceptPublish(conn, frame).then(({ id, seq }) => ({ id, seq }));
      if (key !== undefined) {
        this.dedupe.set(key, accepted);
        accepted.catch(() => this.dedupe.delete(key));
      }
    }
    let message: { id: string; seq: number };
    try {
      message = await accepted;
    } catch (error) {
      if (isRoomwireError(error)) {
        this.sendError(conn, error.code, error.message, { ref, room, details: error.details });
        return;
      }
      this.reportError('publish', error, { connectionId: conn.id, user: conn.user.id, room });
      this.sendError(conn, 'internal', 'publish failed', { ref, room });
      return;
    }
    this.send(conn, { type: 'ack', room, id: message.id, seq: message.seq, ...(ref === undefined ? {} : { ref }) });
  }

  /** A participant whose auto-join failed may still publish: put it in the room first. */
  private async ensurePublisher(conn: ConnState, room: string): Promise<boolean> {
    if (conn.left.has(room) || conn.rooms.size >= this.options.maxRoomsPerConnection) return false;
    if (!(await this.isParticipant(room, conn.user.id)) || conn.state === 'closed') return false;
    await this.inRoomOrder(room, async () => {
      if (conn.rooms.has(room) || conn.state === 'closed') return;
      this.addToRoom(conn, room, 'member', 'ensure');
      this.send(conn, { type: 'joined', room, seq: await this.history.latestSeq(room) });
    });
    return conn.rooms.has(room);
  }

  private async acceptPublish(conn: ConnState, frame: PublishFrame): Promise<StoredMessage> {
    let data: unknown = frame.data;
    const schema = this.options.publishSchema;
    if (schema) {
      const result = schema.safeParse(data);
      if (!result.success) {
        throw new RoomwireError('bad_request', 'publish data is invalid', { details: describeValidationError(result.error) });
      }
      data = result.data;
    }
    const hook = this.options.onPublish;
    if (hook) {
      const transformed = await hook({ user: conn.principal, connectionId: conn.id, room: frame.room, data, cid: frame.cid });
      if (transformed !== undefined) data = transformed;
    }
    const { message } = await this.deliver(frame.room, conn.user.id, data, conn);
    return message;
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
    const otherEpoch = frame.epoch !== undefined && this.history.epoch !== undefined && frame.epoch !== this.history.epoch;
    // Room names are client strings: a null prototype keeps `__proto__` an ordinary key.
    const answered: Record<string, { replayed: number }> = Object.create(null) as Record<string, { replayed: number }>;
    for (const [room, afterSeq] of entries) {
      if (conn.state === 'closed') return;
      if (!conn.rooms.has(room)) {
        // Reading a room the connection is not in asks the loader: it costs a join token.
        if (conn.joinBucket && !conn.joinBucket.take()) {
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
        const until = membership && membership.firstSeq > 0 ? membership.firstSeq - 1 : undefined;
        const messages = otherEpoch && afterSeq > 0 ? null : await this.history.since(room, afterSeq, until);
        if (messages === null) {
          this.sendError(conn, 'history_gap', 'history no longer reaches back that far; refetch this room', { ref, room });
          return;
        }
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
   * @returns the {@link DeliveryReport}.
   * @throws {RoomwireError} `bad_request` for an invalid room name.
   */
  async broadcast(room: string, data: unknown, options: BroadcastOptions = {}): Promise<DeliveryReport> {
    if (!isValidRoom(room)) throw new RoomwireError('bad_request', `room must be a string of 1 to ${MAX_ROOM_LENGTH} characters`);
    const except = options.except === undefined ? undefined : this.conns.get(options.except);
    const { report } = await this.deliver(room, options.from ?? null, data, except);
    return report;
  }

  private deliver(
    room: string,
    from: string | null,
    data: unknown,
    except: ConnState | undefined,
  ): Promise<{ message: StoredMessage; report: DeliveryReport }> {
    let dataJson: string;
    try {
      dataJson = encodeData(data);
    } catch (error) {
      return Promise.reject(error);
    }
    const stored = data === undefined ? null : data;
    return this.inRoomOrder(room, async () => {
      const loaded = this.membership.load(room);
      const snapshot = loaded instanceof Promise ? await loaded : loaded;
      const appended = this.history.append({ room, id: this.nextId(), from, data: stored, ts: Date.now() });
      const message = appended instanceof Promise ? await appended : appended;
      return { message, report: this.fanOut(message, snapshot, except, dataJson) };
    });
  }

  /** Ensure participants, room broadcast, fallback and report: one synchronous pass. */
  private fanOut(message: StoredMessage, snapshot: MembersSnapshot, except: ConnState | undefined, dataJson: string): DeliveryReport {
    const { room, id, seq } = message;
    // The cache's current set, so an addMember/removeMember made while this broadcast
    // awaited its seq is already honoured.
    const users = this.membership.peek(room) ?? snapshot.users;
    const state = this.roomState(room);
    let added = 0;
    let removed = 0;
    let survey = state.survey;
    if (users) {
      const stamp = this.membership.stamp(room);
      if (!survey || survey.topology !== this.topology || survey.stamp !== stamp || stamp < 0) {
        [added, removed] = this.reconcile(state, users, seq);
        survey = this.surveyRoom(room, users, stamp);
        state.survey = survey;
      }
    }
    if (this.logging) {
      this.logger.debug({ room, id, seq, participants: users?.size ?? 0 }, `broadcasting to room ${room}: ${users?.size ?? 0} participants`);
    }

    const text = encodeMessageFrame(message, dataJson);
    let delivered = 0;
    let roomFailures = 0;
    let slow = 0;
    const maxBuffered = this.options.maxBufferedBytes;
    for (const membership of state.members) {
      const conn = membership.conn;
      if (conn === except) continue;
      if (conn.socket.bufferedAmount > maxBuffered) {
        // Growing its buffer further would cost every other connection memory and time.
        this.dropSlow(conn);
        slow++;
        continue;
      }
      try {
        conn.socket.send(text);
        if (membership.firstSeq === 0) membership.firstSeq = seq;
        delivered++;
      } catch (error) {
        conn.lastFailedId = id;
        roomFailures++;
        this.reportError('send', error, { connectionId: conn.id, user: conn.user.id, room });
      }
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
          if (conn.left.has(room)) continue;
          if (conn.lastFailedId === id) roomFailures--;
          if (conn.socket.bufferedAmount > maxBuffered) {
            this.dropSlow(conn);
            slow++;
            continue;
          }
          try {
            conn.socket.send(text);
            const membership = conn.rooms.get(room);
            if (membership && membership.firstSeq === 0) membership.firstSeq = seq;
            delivered++;
            viaFallback++;
            got = true;
          } catch (error) {
            failed++;
            this.reportError('send', error, { connectionId: conn.id, user: conn.user.id, room });
          }
        }
        if (got) reached++;
      }
    }
    failed += roomFailures;
    this.messageCount++;

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
    this.emit('message', message);
    this.emit('delivery', report);
    return report;
  }

  /**
   * Ensure participants: adds open connections of participants that are missing (and did
   * not leave) and takes out those whose user is no longer a participant.
   * @returns how many connections were added and removed.
   */
  private reconcile(state: RoomState, users: ReadonlySet<string>, seq: number): [added: number, removed: number] {
    const room = state.name;
    let added = 0;
    let removed = 0;
    for (const userId of users) {
      const user = this.users.get(userId);
      if (!user) continue;
      for (const conn of user.conns) {
        if (conn.state !== 'open' || conn.rooms.has(room) || conn.left.has(room)) continue;
        if (conn.rooms.size >= this.options.maxRoomsPerConnection) continue;
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

  private dropSlow(conn: ConnState): void {
    const bufferedAmount = conn.socket.bufferedAmount;
    this.logger.warn({ user: conn.user.id, connectionId: conn.id, bufferedAmount }, `closing connection ${conn.id} of user ${conn.user.id}: too slow (${bufferedAmount} bytes unsent)`);
    this.emit('slow', { connectionId: conn.id, user: conn.user.id, bufferedAmount });
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
      state = { name: room, members: new Set(), tail: undefined, survey: undefined };
      this.rooms.set(room, state);
    }
    return state;
  }

  private addToRoom(conn: ConnState, room: string, mode: Membership['mode'], reason: JoinReason): void {
    const membership: Membership = { conn, mode, firstSeq: 0 };
    conn.rooms.set(room, membership);
    this.roomState(room).members.add(membership);
    this.topology++;
    this.emit('join', { connectionId: conn.id, user: conn.user.id, room, reason });
  }

  private removeFromRoom(conn: ConnState, room: string, notify: boolean, reason: LeaveReason): void {
    const membership = conn.rooms.get(room);
    if (!membership) return;
    conn.rooms.delete(room);
    this.topology++;
    const state = this.rooms.get(room);
    if (state) {
      state.members.delete(membership);
      if (state.members.size === 0 && !state.tail) this.rooms.delete(room);
    }
    if (notify) this.send(conn, { type: 'left', room });
    this.emit('leave', { connectionId: conn.id, user: conn.user.id, room, reason });
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
   */
  async addMember(room: string, user: string): Promise<void> {
    if (!isValidRoom(room)) throw new RoomwireError('bad_request', `room must be a string of 1 to ${MAX_ROOM_LENGTH} characters`);
    this.membership.add(room, user);
    const state = this.users.get(user);
    if (!state) return;
    await this.inRoomOrder(room, async () => {
      const targets = [...state.conns].filter(
        (conn) => conn.state === 'open' && !conn.rooms.has(room) && !conn.left.has(room) && conn.rooms.size < this.options.maxRoomsPerConnection,
      );
      if (targets.length === 0) return;
      const seq = await this.history.latestSeq(room);
      for (const conn of targets) {
        if (conn.state !== 'open' || conn.rooms.has(room)) continue;
        this.addToRoom(conn, room, 'member', 'member');
        this.send(conn, { type: 'joined', room, seq });
      }
    });
  }

  /**
   * Tells roomwire that `user` no longer participates in `room`. Their connections leave
   * the room at once (admitted ones too), each told with a `left` frame, and receive
   * nothing published there afterwards.
   */
  removeMember(room: string, user: string): void {
    this.membership.remove(room, user);
    const state = this.users.get(user);
    if (!state) return;
    for (const conn of state.conns) this.removeFromRoom(conn, room, true, 'removed');
  }

  /** Forgets the cached participants of `room`; the next broadcast asks the loader again. */
  invalidate(room: string): void {
    this.membership.invalidate(room);
  }

  /**
   * Admits one connection to a room, whoever its user is (server-driven join). The
   * connection is told with a `joined` frame.
   *
   * @returns false when the connection is unknown or at its room limit.
   */
  async join(connectionId: string, room: string): Promise<boolean> {
    if (!isValidRoom(room)) throw new RoomwireError('bad_request', `room must be a string of 1 to ${MAX_ROOM_LENGTH} characters`);
    const conn = this.conns.get(connectionId);
    if (!conn || conn.state !== 'open') return false;
    if (conn.rooms.has(room)) return true;
    if (conn.rooms.size >= this.options.maxRoomsPerConnection) return false;
    conn.left.delete(room);
    await this.inRoomOrder(room, async () => {
      if (conn.state !== 'open' || conn.rooms.has(room)) return;
      this.addToRoom(conn, room, 'admitted', 'server');
      this.send(conn, { type: 'joined', room, seq: await this.history.latestSeq(room) });
    });
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
    this.removeFromRoom(conn, room, true, 'server');
    conn.left.add(room);
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
    return conn ? [...conn.rooms.keys()] : [];
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
    return { id: conn.id, user: conn.user.id, rooms: [...conn.rooms.keys()], openedAt: conn.openedAt };
  }

  // ---------------------------------------------------------------- shutdown

  /**
   * Stops accepting connections, closes every open one with 1001 ("server shutting
   * down; reconnect elsewhere"), and resolves once all have closed, or after
   * `closeTimeoutMs`, when the rest are dropped. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.conns.size > 0) {
      const drained = new Promise<void>((resolve) => {
        this.drained = resolve;
      });
      for (const conn of [...this.conns.values()]) safeClose(conn.socket, CloseCode.GoingAway, 'server shutting down');
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, Math.min(this.options.closeTimeoutMs, MAX_TIMER_MS));
      });
      await Promise.race([drained, timedOut]);
      clearTimeout(timer);
      for (const conn of [...this.conns.values()]) this.release(conn, CloseCode.GoingAway, 'server shutting down');
    }
    this.logger.info({}, 'room manager closed');
  }

  // ---------------------------------------------------------------- sending

  private announcePresence(conn: ConnState, event: 'online' | 'offline'): void {
    for (const room of conn.rooms.keys()) {
      const state = this.rooms.get(room);
      if (!state) continue;
      const text = encodeServerFrame({ type: 'presence', room, user: conn.user.id, event });
      for (const { conn: other } of state.members) {
        if (other.user !== conn.user) trySend(other, text);
      }
    }
  }

  private send(conn: ConnState, frame: ServerFrame): boolean {
    return trySend(conn, encodeServerFrame(frame));
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
    this.emit('error', err, { phase, ...context });
  }
}

function bucket(limit: RateLimit | false): TokenBucket | undefined {
  return limit === false ? undefined : new TokenBucket(limit.burst, limit.perSecond);
}

function trySend(conn: ConnState, text: string): boolean {
  if (conn.state === 'closed') return false;
  try {
    conn.socket.send(text);
    return true;
  } catch {
    return false;
  }
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
