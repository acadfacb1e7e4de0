/** The protocol version this library speaks; sent as `welcome.protocol`. */
export const PROTOCOL_VERSION = 1;

/** The WebSocket subprotocol of protocol v1. */
export const SUBPROTOCOL = 'roomwire.v1';

/** Longest room name, in JavaScript string length. */
export const MAX_ROOM_LENGTH = 256;

/** An unpaired UTF-16 surrogate: a string holding one has no UTF-8 form. */
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/**
 * A valid room name: a string of 1 to {@link MAX_ROOM_LENGTH} UTF-16 code units with no
 * unpaired surrogate. Such a surrogate has no UTF-8 form, so two names differing only in
 * one would be the same Redis key and channel.
 */
export function isRoomName(value: unknown): value is string {
  return typeof value === 'string' && value.length >= 1 && value.length <= MAX_ROOM_LENGTH && !LONE_SURROGATE.test(value);
}

/** Why a string is not a room name, for error messages. */
export const ROOM_NAME_RULE = `room must be a string of 1 to ${MAX_ROOM_LENGTH} characters with no unpaired surrogate`;

/** Longest `ref` a client may attach to a frame. */
export const MAX_REF_LENGTH = 64;

/** Longest client message id (`cid`) of a `publish`. */
export const MAX_CID_LENGTH = 64;

/** Longest `epoch` a `resume` may carry back; `welcome` never announces a longer one. */
export const MAX_EPOCH_LENGTH = 64;

/** WebSocket close codes of docs/protocol.md, "Closing". */
export const CloseCode = {
  /** Server shutting down; reconnect elsewhere. */
  GoingAway: 1001,
  /** Policy: credentials expired or revoked. */
  PolicyViolation: 1008,
  /** Frame larger than the server's frame limit. */
  MessageTooBig: 1009,
  /** Internal error. */
  InternalError: 1011,
  /** Too slow: could not keep up, or kept exceeding its rate limit. */
  TooSlow: 4008,
} as const;
