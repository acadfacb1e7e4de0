/**
 * The smallest socket shape the core needs. A transport adapter wraps its socket in it;
 * the core never imports a socket library.
 */
export interface Connection {
  /**
   * Sends one text frame. Returns false, sending nothing, when the socket is closing or
   * closed: a broadcast that races a close is routine, so the core counts the frame as not
   * delivered (the fallback and the delivery report see it) without reporting an error.
   * A throw is also "not delivered", and is reported (the `error` event, phase `send`).
   * Any other result (nothing, `true`) counts as sent.
   */
  send(text: string): unknown;
  /** Closes the socket with a WebSocket close code and reason. */
  close(code: number, reason: string): void;
  /** Bytes queued but not yet written to the network. */
  readonly bufferedAmount: number;
}

/**
 * What the core gives back for an opened {@link Connection}: the transport calls
 * `message` for each frame received and `closed` once when the socket closes, as
 * methods of this object (they are shared by every connection, not bound closures).
 */
export interface ConnectionHandlers {
  /** The server-side id of the connection (the one sent in `welcome`). */
  readonly id: string;
  /** Hands the core one received frame. Never throws. */
  message(data: string | Uint8Array, isBinary: boolean): void;
  /** Tells the core the socket closed. Idempotent. */
  closed(code: number, reason: string): void;
  /** Settles once auto-join is done and `welcome` was sent (or the connection closed). */
  readonly ready: Promise<void>;
}

/** A read-only view of one open connection, as the inspection APIs return it. */
export interface ConnectionInfo {
  /** The connection's id (the one sent in `welcome`). */
  readonly id: string;
  /** The id of the user it belongs to. */
  readonly user: string;
  /** The rooms it is in. */
  readonly rooms: readonly string[];
  /** When it opened, in ms since the epoch. */
  readonly openedAt: number;
}
