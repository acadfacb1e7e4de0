/**
 * Error codes a client can receive in an `error` frame (docs/protocol.md, "Server to client").
 */
export type ErrorCode =
  | 'bad_request'
  | 'unknown_type'
  | 'forbidden'
  | 'too_large'
  | 'rate_limited'
  | 'history_gap'
  | 'internal';

/** Every code of {@link ErrorCode}, for validation and docs. */
export const ERROR_CODES: readonly ErrorCode[] = [
  'bad_request',
  'unknown_type',
  'forbidden',
  'too_large',
  'rate_limited',
  'history_gap',
  'internal',
];

/**
 * An error that becomes a protocol `error` frame.
 *
 * Throw it from an `onPublish` hook to refuse a publish with a code of your choice:
 * the publisher gets `{"type":"error","code":…,"message":…}` and nothing is broadcast.
 * The code must be one of {@link ERROR_CODES}: any other (possible from JavaScript) is
 * sent as `internal`, and reported as an `error` event, like a hook's plain `Error`.
 *
 * Check with {@link isRoomwireError} rather than `instanceof` where two copies of
 * roomwire may be loaded.
 *
 * @example
 * ```ts
 * import { RoomwireError } from 'roomwire';
 * throw new RoomwireError('forbidden', 'this conversation is archived');
 * ```
 */
export class RoomwireError extends Error {
  /** Always `'RoomwireError'`: what {@link isRoomwireError} checks. */
  override readonly name = 'RoomwireError';
  /** The protocol error code sent to the client. */
  readonly code: ErrorCode;
  /** Extra, client-visible detail (sent as `details`). */
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, options?: { details?: unknown; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }
}

/** HTTP statuses the upgrade can be refused with (docs/protocol.md, "Connection"). */
export type HandshakeStatus = 401 | 403;

/**
 * Thrown by an {@link Authenticator} (or by roomwire's own connection checks) to refuse an
 * upgrade. `status` 401 means missing or invalid credentials; 403 means valid credentials
 * that the server refuses (origin not allowed, user banned, too many connections).
 *
 * @example
 * ```ts
 * import { HandshakeError } from 'roomwire';
 *
 * declare const token: string | undefined;
 * declare const user: { banned: boolean };
 * if (!token) throw HandshakeError.unauthorized('missing token');
 * if (user.banned) throw HandshakeError.forbidden('user is banned');
 * ```
 */
export class HandshakeError extends Error {
  /** Always `'HandshakeError'`: what {@link isHandshakeError} and transports check. */
  override readonly name = 'HandshakeError';
  /** The HTTP status the upgrade is answered with. */
  readonly status: HandshakeStatus;

  constructor(status: HandshakeStatus, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.status = status;
  }

  /** Missing or invalid credentials: HTTP 401. */
  static unauthorized(message = 'unauthorized', options?: { cause?: unknown }): HandshakeError {
    return new HandshakeError(401, message, options);
  }

  /** Valid credentials the server refuses: HTTP 403. */
  static forbidden(message = 'forbidden', options?: { cause?: unknown }): HandshakeError {
    return new HandshakeError(403, message, options);
  }
}

/** Thrown by the `RoomManager` constructor when its options are invalid. */
export class OptionsError extends Error {
  /** Always `'OptionsError'`, to check by name where `instanceof` fails across copies. */
  override readonly name = 'OptionsError';
}

/** True for a {@link RoomwireError}, also one made by another copy of roomwire. */
export function isRoomwireError(error: unknown): error is RoomwireError {
  return error instanceof Error && error.name === 'RoomwireError' && typeof (error as RoomwireError).code === 'string';
}

/** True for a {@link HandshakeError}, also one made by another copy of roomwire. */
export function isHandshakeError(error: unknown): error is HandshakeError {
  if (!(error instanceof Error) || error.name !== 'HandshakeError') return false;
  const status = (error as HandshakeError).status;
  return status === 401 || status === 403;
}
