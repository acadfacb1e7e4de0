import type { ErrorFrame } from '../protocol/frames.js';

/**
 * Why a client promise rejected or an `error` event fired: a protocol error code sent by
 * the server (`forbidden`, `too_large`, `rate_limited`, …), or one of the client's own:
 *
 * - `timeout`: no answer within the timeout (the request may still have reached the server);
 * - `closed`: {@link RoomwireClient.close} was called before the answer came;
 * - `queue_full`: too many requests were already waiting for a connection;
 * - `unauthorized`: the credentials were refused for good (close code 1008 with a token
 *   that cannot be refreshed), or the token function failed;
 * - `unreachable` (the `error` event only): a connection attempt ended before the
 *   server's `welcome`: the server is down or unreachable, or refused the upgrade (401
 *   or 403), which a browser cannot tell apart. The client keeps retrying with backoff.
 */
export type ClientErrorCode = ErrorFrame['code'] | 'timeout' | 'closed' | 'queue_full' | 'unauthorized' | 'unreachable';

/**
 * The error of every rejected client promise and of the `error` event. Branch on `code`;
 * use {@link isClientError} rather than `instanceof` where two copies of the client may
 * be loaded.
 */
export class ClientError extends Error {
  /** Always `'ClientError'`: what {@link isClientError} checks. */
  override readonly name = 'ClientError';
  /** What went wrong, as a stable code. */
  readonly code: ClientErrorCode;
  /** The room the error is about, when the server named one. */
  readonly room?: string;
  /** Extra detail from the server's `error` frame (validation issues, for instance). */
  readonly details?: unknown;

  constructor(code: ClientErrorCode, message: string, extra: { room?: string | undefined; details?: unknown; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.code = code;
    if (extra.room !== undefined) this.room = extra.room;
    if (extra.details !== undefined) this.details = extra.details;
  }
}

/** True for a {@link ClientError}, also one made by another copy of the client. */
export function isClientError(error: unknown): error is ClientError {
  return error instanceof Error && error.name === 'ClientError' && typeof (error as ClientError).code === 'string';
}

/** The error a server `error` frame stands for. */
export function fromErrorFrame(frame: ErrorFrame): ClientError {
  return new ClientError(frame.code, frame.message, { room: frame.room, details: frame.details });
}
