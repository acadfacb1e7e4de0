import type { AckFrame, ClientFrame, JoinedFrame, JoinFrame, LeaveFrame, PublishFrame, ServerFrame, WelcomeFrame } from '../protocol/frames.js';
import { CloseCode, MAX_CID_LENGTH, ROOM_NAME_RULE, SUBPROTOCOL, isRoomName } from '../protocol/limits.js';
import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { ClientError, fromErrorFrame } from './errors.js';
import type { ClientEvents, ClientState } from './events.js';
import { createCidGenerator } from './ids.js';
import type { ClientOptions } from './options.js';
import { RoomCursors } from './room-cursors.js';
import type { WebSocketConstructor, WebSocketLike } from './websocket.js';

/** Counts one more call in flight for `room`; returns what counts it done. */
function pending(calls: Map<string, number>, room: string): () => void {
  calls.set(room, (calls.get(room) ?? 0) + 1);
  return () => {
    const count = (calls.get(room) ?? 1) - 1;
    if (count > 0) calls.set(room, count);
    else calls.delete(room);
  };
}

/** RFC 6455's code for a connection that ended without a close frame. */
const ABNORMAL_CLOSURE = 1006;

/** The UTF-8 bytes of `text`, as a server counts a frame (no TextEncoder: older React Native lacks it). */
function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit < 0xdc00 && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** Options of one {@link RoomwireClient.publish}. */
export interface PublishOptions {
  /**
   * The client message id. The server delivers a publish once per `cid` (within its dedupe
   * window, 5 minutes by default), so a retry with the same `cid` cannot duplicate it.
   * Pass your own to retry safely after a `timeout`. @default a fresh unique id
   */
  cid?: string | undefined;
  /** How long to wait for the `ack`, queue time included. @default the client's `publishTimeoutMs` */
  timeoutMs?: number | undefined;
}

/** A connection to a roomwire server that survives network loss; made by {@link connect}. */
export interface RoomwireClient {
  /** Where the client stands; the `state` event reports each change. */
  readonly state: ClientState;
  /** The server's id of the current connection; undefined while not open. */
  readonly connectionId: string | undefined;
  /** The rooms the connection is in: the auto-joined ones, plus joined, minus left. */
  readonly rooms: ReadonlySet<string>;
  /** The `seq` of the last message seen in `room` (or its position when joined); 0 when none. */
  lastSeq(room: string): number;
  /** Subscribes to an event; returns the function that unsubscribes. */
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void;
  /**
   * Enters a room that is not the user's own (the server's `canJoin` decides). Joined
   * rooms are joined again after every reconnect.
   * @throws {ClientError} `forbidden`, `timeout`, `closed`, `queue_full`.
   */
  join(room: string): Promise<{
    /** The room joined. */
    room: string;
    /** The room's latest `seq` (0 when it has none); messages after it arrive as `message` events. */
    seq: number;
  }>;
  /**
   * Leaves a room; the client leaves it again after every reconnect, since the server's
   * auto-join puts a new connection back in the user's rooms.
   * @throws {ClientError} `timeout`, `closed`, `queue_full`.
   */
  leave(room: string): Promise<void>;
  /**
   * Publishes `data` (any JSON) into a room; resolves with the server's `ack`. While
   * disconnected the publish waits in a queue; one in flight when the connection drops is
   * sent again with the same `cid`, so it is delivered once.
   * @throws {ClientError} the server's code (`forbidden`, `too_large`, `bad_request`, …),
   * or `timeout`, `closed`, `queue_full`.
   */
  publish(
    room: string,
    data: unknown,
    options?: PublishOptions,
  ): Promise<{
    /** The room published into. */
    room: string;
    /** The message's id, the same one other connections receive. */
    id: string;
    /** The message's `seq` in the room. */
    seq: number;
  }>;
  /** Closes the connection for good: no reconnect, pending promises reject with `closed`. */
  close(): void;
}

/** A frame waiting for its answer. */
interface Request {
  /** The encoded frame, `ref` included: sent again as it is after a reconnect. */
  readonly text: string;
  /** The app's requests survive reconnects; the client's own belong to one connection. */
  readonly keep: boolean;
  /**
   * The room of an app publish, join or leave: it waits while that room's rejoin is
   * unanswered, and they then go in the order the app called them (so a leave does not
   * overtake the publishes called before it).
   */
  readonly holdRoom?: string | undefined;
  /** True for an app publish. */
  readonly isPublish?: boolean;
  /** True for an app leave. */
  readonly isLeave?: boolean;
  /** True while held back for a rejoin: not on the wire. */
  waiting?: boolean;
  /** Handles an answer (or the client's own error); false keeps the request waiting for more. */
  settle(reply: ServerFrame | ClientError): boolean | void;
}

/**
 * How the client paces the join, leave and resume frames it sends on its own after a
 * (re)connect: a first burst, then one per interval. Servers limit these frames (by
 * default 50 at once, then 10 a second, and each refusal is a strike: a connection that
 * collects too many is closed with 4008), so this stays inside, with room left for the
 * app's own joins. A `rate_limited` answer doubles the interval (at most once an
 * interval: one burst's refusals are one sign), up to the longest.
 */
const PACE_BURST = 20;
const PACE_INTERVAL_MS = 125;
const PACE_LONGEST_MS = 2_000;
const noop = (): void => {};

/** A frame the client sends on its own, in turn (see {@link PACE_BURST}). */
interface Paced {
  readonly frame: ClientFrame;
  /** Gets the answer, unless it is `rate_limited` (then the frame is sent again, later). */
  settle(reply: ServerFrame | ClientError): boolean | void;
  /** Checked when its turn comes: true drops it unsent. */
  skip?(): boolean;
  /** Sent only once every paced frame before it is answered (the resume: the rooms it names are joined by then). */
  readonly last?: boolean;
}

/**
 * Connects to a roomwire server and stays connected: reconnects with backoff, resumes
 * every room from the last message seen, and queues publishes while offline.
 *
 * @example
 * ```ts
 * import { connect } from 'roomwire/client';
 *
 * declare function fetchToken(): Promise<string>;
 * declare function render(room: string, data: unknown): void;
 * declare function refetch(room: string): void;
 *
 * const client = connect({ url: 'wss://example.com/ws', token: () => fetchToken() });
 * client.on('message', (m) => render(m.room, m.data));
 * client.on('gap', ({ room }) => refetch(room));
 * await client.publish('conversation:42', { text: 'hello' });
 * ```
 */
export function connect(options: ClientOptions): RoomwireClient {
  const WebSocketClass = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!WebSocketClass) throw new TypeError('roomwire/client: no global WebSocket; pass one as the WebSocket option (the ws package on Node 20)');
  const { url, token } = options;
  const reconnect = options.reconnect ?? {};
  const minDelay = reconnect.minDelayMs ?? 500;
  const maxDelay = reconnect.maxDelayMs ?? 20_000;
  const factor = reconnect.factor ?? 2;
  const timeoutMs = options.publishTimeoutMs ?? 10_000;
  const queueLimit = options.queueLimit ?? 100;

  const events = new Emitter<ClientEvents>();
  // Held messages are released later: not into a room the app left meanwhile, nor after close().
  const cursors = new RoomCursors((message) => {
    if (state !== 'closed' && !unwanted(message.room)) events.emit('message', message);
  });
  const nextCid = createCidGenerator();
  const requests = new Map<string, Request>();
  // A new connection is auto-joined to the user's rooms only; these make the app's own
  // join and leave calls outlive the connection they were made on.
  const joinedByApp = new Set<string>();
  const leftByApp = new Set<string>();
  /** Rooms with an app `leave` not answered yet, and how many. */
  const leaving = new Map<string, number>();
  /** Rooms with an app `join` not answered yet, and how many. */
  const joining = new Map<string, number>();
  /** Rooms whose paced rejoin is not answered yet on this connection. */
  let rejoining = new Set<string>();
  /** Auto-joined rooms the app left, whose paced re-leave is not answered yet on this connection. */
  let releaving = new Set<string>();
  /** Rooms the app left or is leaving: nothing of theirs is delivered or resumed. */
  const unwanted = (room: string): boolean => leftByApp.has(room) || leaving.has(room);
  /** Counts connections, so a timer set for one does nothing on the next. */
  let connections = 0;
  let rooms = new Set<string>();
  let state: ClientState = 'connecting';
  let socket: WebSocketLike | undefined;
  /** True once the current socket delivered `welcome`. */
  let open = false;
  let everOpen = false;
  let connectionId: string | undefined;
  let heartbeatMs = options.heartbeatMs ?? 25_000;
  let lastFrameAt = 0;
  let refs = 0;
  let retries = 0;
  /** Bumped per attempt, so a slow token function's answer for an abandoned attempt is ignored. */
  let attempt = 0;
  let usedToken: string | undefined;
  /** The token the server closed with 1008: not offered again. */
  let refusedToken: string | undefined;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let deadTimer: ReturnType<typeof setTimeout> | undefined;
  let pingTimer: ReturnType<typeof setInterval> | undefined;
  let pacedQueue: Paced[] = [];
  let paceBudget = 0;
  let paceIntervalMs = PACE_INTERVAL_MS;
  let paceTimer: ReturnType<typeof setTimeout> | undefined;
  /** Paced frames sent on this connection and not answered yet. */
  let pacedInFlight = 0;
  /** When the pace last slowed down. */
  let slowedAt = 0;
  /** The server's seq numbering (welcome.epoch); null before the first welcome. */
  let epoch: string | undefined | null = null;

  const setState = (next: ClientState): void => {
    if (state === next) return;
    state = next;
    events.emit('state', next);
  };

  const send = (text: string): void => {
    try {
      socket?.send(text);
    } catch {
      // The socket is closing: its close handler takes over, and requests are sent again.
    }
  };

  /**
   * Sends a request, unless it is the app's publish, join or leave of a room whose rejoin
   * or re-leave is still unanswered: it goes after that, in the app's order, so the server
   * sees the room as the app left it (a publish into a room the app left is refused, as
   * it is online, not taken because the server joined the room again on connect).
   */
  const transmit = (pending: Request): void => {
    const room = pending.holdRoom;
    pending.waiting = room !== undefined && (rejoining.has(room) || releaving.has(room));
    if (!pending.waiting) send(pending.text);
  };

  const request = (frame: ClientFrame, keep: boolean, settle: Request['settle']): string => {
    const ref = (++refs).toString(36);
    const text = JSON.stringify({ ...frame, ref });
    const holds = keep && (frame.type === 'publish' || frame.type === 'leave' || frame.type === 'join');
    const pending: Request = { text, keep, settle, holdRoom: holds ? frame.room : undefined, isPublish: frame.type === 'publish', isLeave: frame.type === 'leave' };
    requests.set(ref, pending);
    if (open) transmit(pending);
    return ref;
  };

  /**
   * A publish the app called before its first unanswered leave of `room` still waits
   * (requests are kept in call order): the room is joined again for it, so it is not
   * refused; a publish called after the leave is refused anyway and needs no rejoin.
   */
  const publishBeforeLeave = (room: string): boolean => {
    for (const pending of requests.values()) {
      if (!pending.keep || pending.holdRoom !== room) continue;
      if (pending.isPublish) return true;
      if (pending.isLeave) return false;
    }
    return false;
  };

  /** The rejoin or re-leave of `room` is answered (or dropped): the app's requests waiting for it go. */
  const holdDone = (holds: Set<string>, room: string): void => {
    if (!holds.delete(room)) return;
    for (const pending of requests.values()) if (pending.waiting && pending.holdRoom === room) transmit(pending);
  };
  const rejoinDone = (room: string): void => holdDone(rejoining, room);
  const releaveDone = (room: string): void => holdDone(releaving, room);

  /**
   * Sends one of the app's requests and settles its promise with the answer. `settled` runs
   * at once when it settles, not a microtask later: the next frame of the same chunk (a
   * `message` right after the `joined`) must already see the room's new state.
   */
  const call = <T>(frame: JoinFrame | LeaveFrame | PublishFrame, wait: number, answer: (reply: ServerFrame) => T, settled: () => void = noop): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const { room } = frame;
      let finished = false;
      const finish = (): void => {
        if (finished) return;
        finished = true;
        settled();
      };
      const refuse = (error: ClientError): void => {
        finish();
        reject(error);
      };
      if (state === 'closed') return refuse(new ClientError('closed', 'the client is closed', { room }));
      if (!isRoomName(room)) {
        return refuse(new ClientError('bad_request', ROOM_NAME_RULE));
      }
      if (!open && requests.size >= queueLimit) {
        return refuse(new ClientError('queue_full', `${queueLimit} requests are already waiting for a connection`, { room }));
      }
      let ref = '';
      const timer = setTimeout(() => {
        requests.delete(ref);
        refuse(new ClientError('timeout', `no answer from the server within ${wait} ms`, { room }));
      }, wait);
      try {
        ref = request(frame, true, (reply) => {
          clearTimeout(timer);
          if (reply instanceof ClientError) refuse(reply);
          else if (reply.type === 'error') refuse(fromErrorFrame(reply));
          else {
            let value: T;
            try {
              value = answer(reply);
            } finally {
              finish();
            }
            resolve(value);
          }
        });
      } catch (error) {
        clearTimeout(timer);
        refuse(new ClientError('bad_request', 'data is not JSON-serializable', { room, cause: error }));
      }
    });

  /** The connection is out of `room`, by the app's leave or the server's word. */
  const lose = (room: string): void => {
    rooms.delete(room);
    cursors.forget(room);
    joinedByApp.delete(room);
    events.emit('left', { room });
  };

  /** Sends paced frames while the budget lasts, in order (see {@link PACE_BURST}). */
  const pump = (): void => {
    while (open && paceBudget > 0 && pacedQueue.length > 0) {
      const item = pacedQueue[0] as Paced;
      if (item.skip?.()) {
        pacedQueue.shift();
        continue;
      }
      if (item.last && pacedInFlight > 0) return;
      pacedQueue.shift();
      paceBudget--;
      pacedInFlight++;
      const connection = connections;
      request(item.frame, false, (reply) => {
        if (connection !== connections) return;
        const refused = !(reply instanceof ClientError) && reply.type === 'error' && reply.code === 'rate_limited';
        // A resume's rate_limited for one room is that room's answer (its replay did not happen).
        if (refused && !(reply.room !== undefined && item.frame.type === 'resume')) {
          // Over the server's budget: sent again first, and the pace slows down.
          pacedInFlight--;
          pacedQueue.unshift(item);
          paceBudget = 0;
          // Once per interval: the refusals of one burst are one sign, not many.
          if (Date.now() - slowedAt >= paceIntervalMs) {
            paceIntervalMs = Math.min(paceIntervalMs * 2, PACE_LONGEST_MS);
            slowedAt = Date.now();
          }
          pump();
          return;
        }
        const done = item.settle(reply);
        // false: more answers to come (a resume's per-room errors before its `resumed`).
        if (done !== false) {
          pacedInFlight--;
          pump();
        }
        return done;
      });
    }
    if (open && pacedQueue.length > 0 && !paceTimer && paceBudget === 0) {
      paceTimer = setTimeout(() => {
        paceTimer = undefined;
        paceBudget = 1;
        pump();
      }, paceIntervalMs);
    }
  };

  const paced = (item: Paced): void => {
    pacedQueue.push(item);
    pump();
  };

  /**
   * Asks for what `resume` (room to last seq) missed, and releases each room's held live
   * messages once its replay is done. `last`: after every paced frame before it is answered.
   */
  const resumeRooms = (resume: Record<string, number>, last: boolean): void => {
    const names = Object.keys(resume);
    if (names.length === 0) return;
    paced({
      frame: { type: 'resume', rooms: resume, ...(epoch == null ? {} : { epoch }) },
      last,
      // Rooms lost or left since the welcome are not asked for.
      skip: () => {
        for (const room of names) {
          if (room in resume && (!rooms.has(room) || unwanted(room))) {
            delete resume[room];
            cursors.release(room);
          }
        }
        return Object.keys(resume).length === 0;
      },
      settle: (reply) => {
        if (reply instanceof ClientError) {
          // The resume itself was over the frame limit: give up replaying its rooms (gap on the next welcome).
          if (reply.code === 'too_large') for (const room of names) cursors.forget(room);
          return;
        }
        if (reply.type === 'error' && reply.room !== undefined) {
          const room = reply.room;
          if (reply.code === 'forbidden') {
            if (rooms.has(room)) lose(room);
          } else {
            // history_gap, or the room could not be replayed now (rate_limited): either
            // way its missed messages will not come, and the app must refetch it.
            events.emit('gap', { room });
            cursors.release(room, true);
            if (cursors.seq(room) === undefined) askBaseline(room);
          }
          return false;
        }
        if (reply.type === 'error') {
          // Nothing more is replayed: every room still waiting has a gap.
          for (const room of Object.keys(resume)) {
            if (!cursors.isHeld(room)) continue;
            events.emit('gap', { room });
            cursors.release(room, true);
            if (cursors.seq(room) === undefined) askBaseline(room);
          }
          events.emit('error', fromErrorFrame(reply));
          return;
        }
        for (const room of names) cursors.release(room);
      },
    });
  };

  /**
   * For a server whose `welcome` has no `seqs`, the client asks with a `join` (a no-op on
   * the server for a room the connection is in, answered with the room's latest seq).
   * Without it, a resume would have to start from 0 and replay history the app already has.
   */
  const askBaseline = (room: string): void =>
    paced({
      frame: { type: 'join', room },
      skip: () => !rooms.has(room) || unwanted(room) || cursors.seq(room) !== undefined,
      settle: (reply) => {
        // Refused (the user no longer participates): the connection is not in the room.
        if (!(reply instanceof ClientError) && reply.type === 'error' && rooms.has(room)) lose(room);
      },
    });

  let pingSentAt = 0;
  const ping = (): void => {
    // The first ping no frame has answered yet: silence is measured from it.
    if (pingSentAt <= lastFrameAt) pingSentAt = Date.now();
    send('{"type":"ping"}');
  };

  /** Drops the connection when no frame came for two heartbeats. */
  const watch = (): void => {
    clearTimeout(deadTimer);
    const now = Date.now();
    const left = lastFrameAt + 2 * heartbeatMs - now;
    // Before welcome no ping can be answered: the handshake is bound by 2 heartbeats.
    if (!open) {
      if (left > 0) deadTimer = setTimeout(watch, left);
      else lost(1006);
      return;
    }
    // Timers may have been throttled (a hidden tab): silence counts only once a ping went
    // out and stayed unanswered for a heartbeat.
    const unanswered = pingSentAt > lastFrameAt ? pingSentAt + heartbeatMs - now : heartbeatMs;
    if (left > 0 || unanswered > 0) {
      if (left <= 0 && pingSentAt <= lastFrameAt) ping();
      deadTimer = setTimeout(watch, Math.max(left, unanswered, 1));
    } else lost(1006);
  };

  const welcome = (frame: WelcomeFrame): void => {
    open = everOpen = true;
    connections++;
    retries = 0;
    connectionId = frame.connectionId;
    // A zero or missing value from the server must not turn the ping interval into a busy loop.
    heartbeatMs = options.heartbeatMs ?? (frame.heartbeatMs > 0 ? frame.heartbeatMs : heartbeatMs);
    clearInterval(pingTimer);
    pingTimer = setInterval(ping, heartbeatMs);
    watch();

    const previous = rooms;
    rooms = new Set(frame.rooms);
    // Another numbering (an in-memory history restarted): the old seqs name other
    // messages, so no room can be resumed. Checked here too, not only by the server, in
    // case the last connection dropped before its resume was answered.
    if (epoch !== null && frame.epoch !== epoch) for (const room of previous) cursors.forget(room);
    epoch = frame.epoch;
    pacedQueue = [];
    pacedInFlight = 0;
    paceBudget = PACE_BURST;
    paceIntervalMs = PACE_INTERVAL_MS;
    // The rooms the server joined this connection to, before the app's are added back.
    const autoJoined = new Set(rooms);
    const releaves = [...leftByApp].filter((room) => rooms.delete(room));
    // A room the app is leaving is joined again too while a publish it called before the
    // leave waits: the publish goes first, then the leave (both wait for the rejoin).
    const rejoins = [...joinedByApp].filter((room) => !rooms.has(room) && (!leaving.has(room) || publishBeforeLeave(room)));
    for (const room of rejoins) rooms.add(room);
    rejoining = new Set(rejoins);
    releaving = new Set(releaves);
    // The app's requests (queued, or in flight when the last connection dropped) go again
    // with the same ref and cid, before the resume: their acks mark the app's own messages
    // as seen, so the replay does not hand them back.
    for (const pending of requests.values()) if (pending.keep) transmit(pending);

    // Auto-joined rooms are resumed at once; the others once they are joined again.
    const resumeNow = Object.create(null) as Record<string, number>;
    const resumeLater = Object.create(null) as Record<string, number>;
    for (const room of previous) {
      if (state === 'closed') return;
      if (unwanted(room)) {
        // A leave still waiting for its answer: the room stays listed until it comes, as online.
        if (leaving.has(room)) rooms.add(room);
        else rooms.delete(room);
        continue;
      }
      const seq = cursors.seq(room);
      if (seq !== undefined) {
        (autoJoined.has(room) ? resumeNow : resumeLater)[room] = seq;
        rooms.add(room);
        // Messages published since this connection opened arrive live before the replay;
        // they wait until the replay is complete.
        cursors.hold(room);
      } else if (rooms.has(room)) {
        // Where the room stood is unknown (the last connection dropped before the client
        // learned it, or the seqs restarted), so what was missed cannot be asked for.
        events.emit('gap', { room });
      } else {
        rooms.add(room);
        lose(room);
      }
    }
    if (state === 'closed') return;
    resumeRooms(resumeNow, false);
    // A re-leave, unless the app joined the room again meanwhile.
    for (const room of releaves) {
      paced({
        frame: { type: 'leave', room },
        skip: () => {
          if (leftByApp.has(room) && !joining.has(room)) return false;
          releaveDone(room);
          return true;
        },
        settle: () => releaveDone(room),
      });
    }
    for (const room of rejoins) {
      paced({
        frame: { type: 'join', room },
        // Not when the app is leaving it (or left it) meanwhile, unless a publish the app
        // called before that waits for it: the publish goes first, then the leave.
        skip: () => {
          if (!unwanted(room)) return false;
          if (publishBeforeLeave(room)) return false;
          rejoinDone(room);
          return true;
        },
        settle: (reply) => {
          rejoinDone(room);
          if (reply instanceof ClientError || reply.type !== 'error') return;
          if (rooms.has(room)) lose(room);
          events.emit('error', fromErrorFrame(reply));
        },
      });
    }
    resumeRooms(resumeLater, true);
    // The server tells where each auto-joined room stands; older servers do not, and then
    // the client asks with one join per room.
    if (frame.seqs) {
      for (const room of frame.rooms) {
        const seq = frame.seqs[room];
        if (typeof seq === 'number' && cursors.seq(room) === undefined) cursors.advance(room, seq);
      }
    }
    for (const room of rooms) if (cursors.seq(room) === undefined) askBaseline(room);
    // A listener above (`gap`, `left`) may have closed the client.
    if ((state as ClientState) === 'closed') return;
    setState('open');
    events.emit('welcome', frame);
  };

  const receive = (frame: ServerFrame): void => {
    switch (frame.type) {
      case 'welcome':
        if (!open) welcome(frame);
        return;
      case 'message':
        // A room the app left may still send until the server has the leave (after a
        // reconnect, it auto-joins the room again before the client leaves it again).
        if (unwanted(frame.room)) return;
        // Only a resume's replay carries a ref on a message.
        cursors.receive(frame, frame.ref !== undefined);
        return;
      case 'presence':
        events.emit('presence', frame);
        return;
      case 'joined':
        if (!cursors.isHeld(frame.room)) cursors.advance(frame.room, frame.seq);
        if (!rooms.has(frame.room)) {
          rooms.add(frame.room);
          events.emit('joined', { room: frame.room, seq: frame.seq });
        }
        break;
      case 'left':
        if (rooms.has(frame.room)) lose(frame.room);
        else cursors.forget(frame.room);
        break;
      case 'ack':
        cursors.remember(frame.id);
        // Everything before the ack's seq reached this connection first: the room is current.
        if (!cursors.isHeld(frame.room)) cursors.advance(frame.room, frame.seq);
        break;
      case 'error':
        if (frame.ref === undefined || !requests.has(frame.ref)) {
          events.emit('error', fromErrorFrame(frame));
          return;
        }
        break;
      case 'resumed':
      case 'pong':
        break;
      default:
        // A frame type this client does not know (a newer server's) answers no request of its own.
        return;
    }
    if (frame.ref === undefined) return;
    const pending = requests.get(frame.ref);
    if (pending && pending.settle(frame) !== false) requests.delete(frame.ref);
  };

  /** Forgets the current socket; `graceful` closes it normally, else it is dropped at once. */
  const stopSocket = (graceful: boolean): void => {
    clearTimeout(deadTimer);
    clearInterval(pingTimer);
    clearTimeout(paceTimer);
    paceTimer = undefined;
    pacedQueue = [];
    pacedInFlight = 0;
    const ws = socket;
    socket = undefined;
    open = false;
    connectionId = undefined;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    // ws throws an 'error' event that has no listener.
    ws.onerror = noop;
    try {
      // A dead peer never answers a close handshake: ws would hold the socket 30 s.
      const terminate = (ws as { terminate?: () => void }).terminate;
      if (!graceful && terminate) terminate.call(ws);
      else ws.close(1000);
    } catch {
      // Already closed.
    }
  };

  const retry = (delay = backoffDelay(retries++, minDelay, maxDelay, factor)): void => {
    // A listener of the event that led here may have closed the client.
    if (state === 'closed') return;
    retryTimer = setTimeout(() => void connectOnce(), delay);
  };

  const lost = (code: number): void => {
    const welcomed = open;
    stopSocket(false);
    if (code === CloseCode.MessageTooBig && welcomed) {
      // The server refused a frame over its limit: sending it again would only repeat this.
      // Any request on the wire, kept or not, measured in UTF-8 bytes as the server does.
      let largest: [string, Request, number] | undefined;
      for (const [ref, pending] of requests) {
        if (pending.waiting) continue;
        const size = utf8Length(pending.text);
        if (!largest || size > largest[2]) largest = [ref, pending, size];
      }
      if (largest) {
        requests.delete(largest[0]);
        largest[1].settle(new ClientError('too_large', 'the frame was over the server\'s frame limit (1009)'));
      }
    }
    for (const [ref, pending] of requests) if (!pending.keep) requests.delete(ref);
    cursors.dropHolds();
    if (state === 'closed') return;
    if (code === CloseCode.PolicyViolation) {
      if (typeof token !== 'function') {
        fail(new ClientError('unauthorized', 'the server closed the connection: credentials expired or revoked (1008)'));
        return;
      }
      refusedToken = usedToken;
    }
    if (!welcomed && code !== CloseCode.PolicyViolation) {
      // A browser does not say why a handshake failed: a server that is down and one that
      // answered 401 or 403 look the same. Say that it failed, so the app can tell.
      events.emit(
        'error',
        new ClientError(
          'unreachable',
          `could not connect (close code ${code}): the server is unreachable, or refused the connection (401 or 403: credentials or origin it does not accept); retrying`,
        ),
      );
      if ((state as ClientState) === 'closed') return;
    }
    if (code === CloseCode.GoingAway) {
      // The server is shutting down on purpose: another process can take us now.
      retries = 0;
      retry(Math.random() * minDelay);
    } else if (code === CloseCode.TooSlow) {
      retry(maxDelay * (0.5 + Math.random() / 2));
    } else {
      retry();
    }
    if (everOpen) setState('reconnecting');
  };

  const connectOnce = async (): Promise<void> => {
    const current = ++attempt;
    let value: string | undefined;
    try {
      value = typeof token === 'function' ? await token() : token;
    } catch (error) {
      if (current !== attempt || state === 'closed') return;
      events.emit('error', new ClientError('unauthorized', 'the token function failed', { cause: error }));
      return retry();
    }
    if (current !== attempt || state === 'closed') return;
    // After 1008 the same token would be refused again: wait for the app to refresh it.
    if (refusedToken !== undefined && value === refusedToken) return retry();
    refusedToken = undefined;
    usedToken = value;
    let target = url;
    const protocols = [SUBPROTOCOL];
    if (value !== undefined) {
      if (options.tokenTransport === 'query') target += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(value)}`;
      else protocols.push(`bearer.${value}`);
    }
    let ws: WebSocketLike;
    try {
      ws = new WebSocketClass(target, protocols);
    } catch (error) {
      return fail(new ClientError('bad_request', `cannot open a WebSocket to ${url}`, { cause: error }));
    }
    socket = ws;
    // The heartbeat window also bounds the handshake and the wait for welcome.
    lastFrameAt = Date.now();
    watch();
    ws.onopen = () => {
      pingTimer = setInterval(ping, heartbeatMs);
    };
    ws.onmessage = (event) => {
      if (ws !== socket) return;
      lastFrameAt = Date.now();
      if (typeof event.data !== 'string') return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(event.data) as ServerFrame;
      } catch {
        return;
      }
      if (typeof frame === 'object' && frame !== null && typeof frame.type === 'string') receive(frame);
    };
    ws.onclose = (event) => {
      if (ws === socket) lost(event.code);
    };
    // Browsers follow an error with a close. Node's built-in WebSocket may not, for a
    // connection that was never established: take the error as the close then.
    ws.onerror = () => {
      if (ws === socket && !open) lost(ABNORMAL_CLOSURE);
    };
  };

  const fail = (error: ClientError): void => {
    events.emit('error', error);
    close();
  };

  const close = (): void => {
    if (state === 'closed') return;
    state = 'closed';
    attempt++;
    clearTimeout(retryTimer);
    stopSocket(true);
    cursors.dropHolds();
    rooms = new Set();
    const pending = [...requests.values()];
    requests.clear();
    for (const entry of pending) entry.settle(new ClientError('closed', 'the client was closed before the server answered'));
    events.emit('state', 'closed');
  };

  // After this call returns, so the caller can subscribe to events first.
  void Promise.resolve().then(connectOnce);

  return {
    get state() {
      return state;
    },
    get connectionId() {
      return connectionId;
    },
    get rooms(): ReadonlySet<string> {
      return rooms;
    },
    lastSeq: (room) => cursors.seq(room) ?? 0,
    on: (event, listener) => events.on(event, listener),
    join: (room) => {
      const done = pending(joining, room);
      return call(
        { type: 'join', room },
        timeoutMs,
        (reply) => {
          joinedByApp.add(room);
          leftByApp.delete(room);
          return { room, seq: (reply as JoinedFrame).seq };
        },
        done,
      );
    },
    leave: (room) => {
      // From the call on, the app wants none of the room: its messages are dropped, and a
      // reconnect does not resume it.
      const done = pending(leaving, room);
      return call(
        { type: 'leave', room },
        timeoutMs,
        () => {
          leftByApp.add(room);
        },
        done,
      );
    },
    publish: (room, data, { cid = nextCid(), timeoutMs: wait = timeoutMs } = {}) => {
      if (typeof cid !== 'string' || cid.length > MAX_CID_LENGTH) {
        return Promise.reject(new ClientError('bad_request', `cid must be a string of at most ${MAX_CID_LENGTH} characters`, { room }));
      }
      // JSON has no undefined: the frame would go without data, which the server refuses.
      if (data === undefined) return Promise.reject(new ClientError('bad_request', 'data is required (use null for none)', { room }));
      return call({ type: 'publish', room, data, cid }, wait, (reply) => {
        const { id, seq } = reply as AckFrame;
        return { room, id, seq };
      });
    },
    close,
  };
}
