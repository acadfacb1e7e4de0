import type { ErrorCode } from '../errors.js';

/** A JSON value, as `publish.data` and `message.data` carry it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** `join`: ask to be in a room. */
export interface JoinFrame {
  /** The frame's kind. */
  type: 'join';
  /** The room to join: 1 to 256 characters, with no unpaired UTF-16 surrogate. */
  room: string;
  /** Any string of at most 64 characters; every reply to this frame echoes it. */
  ref?: string;
}

/** `leave`: stop being in a room. */
export interface LeaveFrame {
  /** The frame's kind. */
  type: 'leave';
  /** The room to leave. */
  room: string;
  /** Any string of at most 64 characters; every reply to this frame echoes it. */
  ref?: string;
}

/** `publish`: send `data` into a room. */
export interface PublishFrame {
  /** The frame's kind. */
  type: 'publish';
  /** The room to publish into; the connection must be in it. */
  room: string;
  /** Any JSON value; required (`null` is a value). */
  data: unknown;
  /**
   * Client message id, at most 64 characters: a repeated publish with the same `cid` within
   * the dedupe window gets the first `ack` again and is not delivered twice.
   */
  cid?: string;
  /** Any string of at most 64 characters; every reply to this frame echoes it. */
  ref?: string;
}

/** `resume`: replay what was missed, per room, after the given `seq`. */
export interface ResumeFrame {
  /** The frame's kind. */
  type: 'resume';
  /** Room name to the last `seq` the client saw there (0: nothing seen). */
  rooms: Record<string, number>;
  /**
   * The `epoch` of the `welcome` those seqs were seen under. When the server's differs,
   * its seqs restarted (in-memory history after a restart), and every room resumed from a
   * seq above 0 gets `history_gap`; a room resumed from 0 is replayed as usual.
   */
  epoch?: string;
  /** Any string of at most 64 characters; every reply to this frame echoes it. */
  ref?: string;
}

/** `ping`: answered with `pong`. */
export interface PingFrame {
  /** The frame's kind. */
  type: 'ping';
  /** Any string of at most 64 characters; every reply to this frame echoes it. */
  ref?: string;
}

/** Any frame a client may send. */
export type ClientFrame = JoinFrame | LeaveFrame | PublishFrame | ResumeFrame | PingFrame;

/** `welcome`: the server's first frame; the connection is already in `rooms`. */
export interface WelcomeFrame {
  /** The frame's kind. */
  type: 'welcome';
  /** The protocol version the server speaks. */
  protocol: 1;
  /** The server-side id of this connection. */
  connectionId: string;
  /** The authenticated user. */
  user: {
    /** The user id, as the server's membership loader knows it. */
    id: string;
  };
  /**
   * Names the server's seq numbering: it changes when seqs restart (a server with
   * in-memory history restarted). A client sends it back in `resume`.
   */
  epoch?: string;
  /**
   * Each auto-joined room's latest `seq` when the connection entered it (0 when it has
   * none), so a client knows where to resume from without asking per room.
   */
  seqs?: Record<string, number>;
  /** The rooms the connection was auto-joined to before this frame was sent. */
  rooms: string[];
  /**
   * How often the server checks each connection, in ms: the `ws` adapter pings one it has
   * not heard from since its last check, and drops one that left a ping unanswered for two
   * checks. A client may use it to detect a dead link.
   */
  heartbeatMs: number;
}

/** `message`: one message of a room. */
export interface MessageFrame {
  /** The frame's kind. */
  type: 'message';
  /** The room the message was published into. */
  room: string;
  /** The message's unique id. */
  id: string;
  /** The message's position in the room: 1 for the first, each next one higher by exactly 1. */
  seq: number;
  /** The sending user's id, or null for the server. */
  from: string | null;
  /** The published JSON value (as the server's publish hook returned it). */
  data: unknown;
  /** When the server accepted it, in ms since the epoch. */
  ts: number;
  /** Set on messages replayed for a `resume`: that frame's `ref`. */
  ref?: string;
}

/** `joined`: the connection is now in `room`, whose latest seq is `seq`. */
export interface JoinedFrame {
  /** The frame's kind. */
  type: 'joined';
  /** The room the connection is now in. */
  room: string;
  /** The room's latest `seq` (0 when it has none): resume from here to catch up. */
  seq: number;
  /** The `ref` of the client frame this answers, when it had one. */
  ref?: string;
}

/** `left`: the connection is no longer in `room`. */
export interface LeftFrame {
  /** The frame's kind. */
  type: 'left';
  /** The room the connection is no longer in. */
  room: string;
  /** The `ref` of the client frame this answers, when it had one. */
  ref?: string;
}

/** `ack`: a publish was accepted as message `id` with `seq`. */
export interface AckFrame {
  /** The frame's kind. */
  type: 'ack';
  /** The room the publish went to. */
  room: string;
  /** The id the message was broadcast with. */
  id: string;
  /** The message's `seq` in the room. */
  seq: number;
  /** The `ref` of the client frame this answers, when it had one. */
  ref?: string;
}

/** `resumed`: the end of a `resume` answer. */
export interface ResumedFrame {
  /** The frame's kind. */
  type: 'resumed';
  /** Every resumed room that got no error, with the number of messages replayed (0 included). */
  rooms: Record<
    string,
    {
      /** How many `message` frames were replayed for the room. */
      replayed: number;
    }
  >;
  /** The `ref` of the client frame this answers, when it had one. */
  ref?: string;
}

/** `presence`: a participant came online or went offline. */
export interface PresenceFrame {
  /** The frame's kind. */
  type: 'presence';
  /** The room whose participant came online or went offline. */
  room: string;
  /** The participant's user id. */
  user: string;
  /** `online`: their first connection opened; `offline`: their last one closed. */
  event: 'online' | 'offline';
}

/** `pong`: the answer to `ping`. */
export interface PongFrame {
  /** The frame's kind. */
  type: 'pong';
  /** The `ref` of the client frame this answers, when it had one. */
  ref?: string;
}

/** `error`: a frame was refused; the connection goes on. */
export interface ErrorFrame {
  /** The frame's kind. */
  type: 'error';
  /** What went wrong; branch on this, not on `message`. */
  code: ErrorCode;
  /** A description for people. */
  message: string;
  /** The `ref` of the client frame this answers, when it had one. */
  ref?: string;
  /** The room the error is about, when it is about one (e.g. in a `resume` answer). */
  room?: string;
  /** Machine-readable detail, e.g. `issues` for a `bad_request`. */
  details?: unknown;
}

/** Any frame a server may send. */
export type ServerFrame =
  | WelcomeFrame
  | MessageFrame
  | JoinedFrame
  | LeftFrame
  | AckFrame
  | ResumedFrame
  | PresenceFrame
  | PongFrame
  | ErrorFrame;
