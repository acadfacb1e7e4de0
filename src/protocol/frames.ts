import type { ErrorCode } from '../errors.js';

/** A JSON value, as `publish.data` and `message.data` carry it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** `join`: ask to be in a room. */
export interface JoinFrame {
  type: 'join';
  room: string;
  ref?: string;
}

/** `leave`: stop being in a room. */
export interface LeaveFrame {
  type: 'leave';
  room: string;
  ref?: string;
}

/** `publish`: send `data` into a room. */
export interface PublishFrame {
  type: 'publish';
  room: string;
  data: unknown;
  cid?: string;
  ref?: string;
}

/** `resume`: replay what was missed, per room, after the given `seq`. */
export interface ResumeFrame {
  type: 'resume';
  rooms: Record<string, number>;
  ref?: string;
}

/** `ping`: answered with `pong`. */
export interface PingFrame {
  type: 'ping';
  ref?: string;
}

/** Any frame a client may send. */
export type ClientFrame = JoinFrame | LeaveFrame | PublishFrame | ResumeFrame | PingFrame;

/** `welcome`: the server's first frame; the connection is already in `rooms`. */
export interface WelcomeFrame {
  type: 'welcome';
  protocol: 1;
  connectionId: string;
  user: { id: string };
  rooms: string[];
  heartbeatMs: number;
}

/** `message`: one message of a room. */
export interface MessageFrame {
  type: 'message';
  room: string;
  id: string;
  seq: number;
  from: string | null;
  data: unknown;
  ts: number;
  ref?: string;
}

/** `joined`: the connection is now in `room`, whose latest seq is `seq`. */
export interface JoinedFrame {
  type: 'joined';
  room: string;
  seq: number;
  ref?: string;
}

/** `left`: the connection is no longer in `room`. */
export interface LeftFrame {
  type: 'left';
  room: string;
  ref?: string;
}

/** `ack`: a publish was accepted as message `id` with `seq`. */
export interface AckFrame {
  type: 'ack';
  room: string;
  id: string;
  seq: number;
  ref?: string;
}

/** `resumed`: the end of a `resume` answer. */
export interface ResumedFrame {
  type: 'resumed';
  rooms: Record<string, { replayed: number }>;
  ref?: string;
}

/** `presence`: a participant came online or went offline. */
export interface PresenceFrame {
  type: 'presence';
  room: string;
  user: string;
  event: 'online' | 'offline';
}

/** `pong`: the answer to `ping`. */
export interface PongFrame {
  type: 'pong';
  ref?: string;
}

/** `error`: a frame was refused; the connection goes on. */
export interface ErrorFrame {
  type: 'error';
  code: ErrorCode;
  message: string;
  ref?: string;
  room?: string;
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
