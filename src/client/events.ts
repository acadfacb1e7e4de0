import type { PresenceFrame, WelcomeFrame } from '../protocol/frames.js';
import type { ClientError } from './errors.js';

/**
 * Where the client stands:
 * - `connecting`: before the first `welcome`, including failed first attempts; the
 *   initial state, so no `state` event announces it;
 * - `open`: the server sent `welcome` on the current connection;
 * - `reconnecting`: a connection was lost and the client is getting a new one;
 * - `closed`: {@link RoomwireClient.close} was called, or the credentials were refused for good.
 */
export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** One message of a room, as the `message` event delivers it. */
export interface RoomMessage {
  /** The room it was published into. */
  readonly room: string;
  /** Unique message id; the same id as the publisher's `ack`. */
  readonly id: string;
  /** Position in the room: consecutive, starting at 1. */
  readonly seq: number;
  /** The sending user's id, or null when the server sent it. */
  readonly from: string | null;
  /** The published JSON value. */
  readonly data: unknown;
  /** When the server accepted it, in ms since the epoch. */
  readonly ts: number;
}

/** The typed events of a {@link RoomwireClient}; subscribe with `client.on(event, listener)`. */
export interface ClientEvents {
  /**
   * A connection is ready: the server's `welcome` frame, after every (re)connect. Its
   * `rooms` are the rooms the server auto-joined; `client.rooms` is already up to date.
   */
  welcome: (frame: WelcomeFrame) => void;
  /** A message of a room, in `seq` order per room, each `id` once, replayed ones first after a reconnect. */
  message: (message: RoomMessage) => void;
  /** A participant came online or went offline (only where the server enables presence). */
  presence: (frame: PresenceFrame) => void;
  /** The client's state changed. */
  state: (state: ClientState) => void;
  /**
   * Something failed that no promise reports: a refused rejoin, an unexpected `error` frame,
   * credentials refused for good or a token function that threw (`unauthorized`), a
   * connection attempt that ended before `welcome` (`unreachable`; the client retries).
   */
  error: (error: ClientError) => void;
  /**
   * Messages of `room` may have been missed and cannot be replayed (the server's history
   * no longer reaches back, or the server restarted). Refetch the room from your API;
   * messages after this event arrive as usual.
   */
  gap: (event: { room: string }) => void;
  /** The connection entered a room: your `join`, or the server adding you; `seq` is the room's latest. */
  joined: (event: { room: string; seq: number }) => void;
  /** The connection left a room: your `leave`, or the server removing you. */
  left: (event: { room: string }) => void;
}
